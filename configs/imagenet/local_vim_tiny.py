# LocalVim-T (hunto/LocalMamba, README command line): 76.2 top-1 published. LocalVMamba-T's recipe (drop path 0.1), in
# float32: the README passes --amp for LocalVMamba only. Weight-decay exclusions as the official Vim-based model has
# them: 1-D parameters and names ending in '.bias' (conv1d.bias, dt_proj.bias: vssm keeps them as conv1d_bias /
# dt_proj_bias), pos_embed, cls_token; A_log decays.
_base_ = ['./local_vmamba_tiny.py']

model = dict(name='local_vim_tiny', drop_path_rate=0.1)
optimizer = dict(no_weight_decay=('pos_embed', 'cls_token', '*.D', '*.conv1d_bias', '*.dt_proj_bias'))
amp = None
