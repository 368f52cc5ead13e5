# SiMBA-L (badripatro/simba): 84.4 top-1 published (with Token Labeling). SiMBA-S's recipe, drop path 0.3 and gradient
# clipping 1.0.
_base_ = ['./simba_s.py']

model = dict(name='simba_l', drop_path_rate=0.3)
clip_grad = 1.0
