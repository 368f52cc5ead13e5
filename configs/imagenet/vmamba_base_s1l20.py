# VMamba-B [s1l20] (configs/vssm/vmambav2v_base_224.yaml): 83.8 top-1 published. VMamba-T's recipe, drop path 0.5.
_base_ = ['./vmamba_tiny.py']

model = dict(name='vmamba_base_s1l20', drop_path_rate=0.5)
