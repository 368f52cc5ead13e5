# VMamba-B [s2l15] (configs/vssm/vmambav2_base_224.yaml): 83.9 top-1 published. VMamba-T's recipe, drop path 0.6.
_base_ = ['./vmamba_tiny.py']

model = dict(name='vmamba_base', drop_path_rate=0.6)
