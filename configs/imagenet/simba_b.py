# SiMBA-B (badripatro/simba): 83.5 top-1 published (with Token Labeling). SiMBA-S's recipe, drop path 0.1.
_base_ = ['./simba_s.py']

model = dict(name='simba_b', drop_path_rate=0.1)
