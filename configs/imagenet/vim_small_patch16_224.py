# Vim-S (hustvl/Vim, vim/scripts/pt-vim-s.sh): 80.5 top-1 published. As Vim-Ti, except 8 GPUs x 64 = 512 images per
# step with lr 1e-3 (so lr_base 1e-3 per 512), weight decay 0.05 and drop path 0.05.
_base_ = ['./vim_tiny_patch16_224.py']

model = dict(name='vim_small_patch16_224', drop_path_rate=0.05)
batch_size = 64  # per GPU, on 8 GPUs
optimizer = dict(lr_base=1e-3, weight_decay=0.05)
