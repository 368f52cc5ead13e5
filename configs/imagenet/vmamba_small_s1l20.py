# VMamba-S [s1l20] (configs/vssm/vmambav2v_small_224.yaml): 83.3 top-1 published. VMamba-T's recipe, drop path 0.3.
_base_ = ['./vmamba_tiny.py']

model = dict(name='vmamba_small_s1l20', drop_path_rate=0.3)
