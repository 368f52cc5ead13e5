# VMamba-S [s2l15] (configs/vssm/vmambav2_small_224.yaml): 83.6 top-1 published. VMamba-T's recipe, drop path 0.3.
_base_ = ['./vmamba_tiny.py']

model = dict(name='vmamba_small', drop_path_rate=0.3)
