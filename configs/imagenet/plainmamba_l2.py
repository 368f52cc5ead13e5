# PlainMamba-L2 (plain_mamba_l2_in1k_300e.py): 81.6 top-1 published. As L1, except 20 warm-up epochs, gradient clipping
# 1.0, float32 with an EMA of the weights (momentum 1e-4, i.e. decay 0.9999, warm-up 100 iterations).
_base_ = ['./plainmamba_l1.py']

model = dict(name='plainmamba_l2', drop_path_rate=0.2)
scheduler = dict(warmup_epochs=20)
clip_grad = 1.0
ema = dict(enable=True, decay=0.9999, warmup=True)
amp = None
