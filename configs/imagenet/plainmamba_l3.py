# PlainMamba-L3 (plain_mamba_l3_in1k_300e.py): 82.3 top-1 published. As L2, except 4 GPUs x 256 = 1024 images per step
# (lr 1e-3; warm-up from 1e-6, cosine to 1e-5) and drop path 0.4.
_base_ = ['./plainmamba_l2.py']

model = dict(name='plainmamba_l3', drop_path_rate=0.4)
scheduler = dict(warmup_lr=1e-6, min_lr=1e-5)
