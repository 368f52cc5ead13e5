# VMamba-T [s2l5] (configs/vssm/vmambav2_tiny_224.yaml): 82.5 top-1 published. VMamba-T's recipe, drop path 0.2.
_base_ = ['./vmamba_tiny.py']

model = dict(name='vmamba_tiny_s2l5', drop_path_rate=0.2)
