# LocalVim-S (hunto/LocalMamba): 81.1 top-1 published (no released weights: the README's link is LocalVMamba-S's file).
# LocalVim-T's recipe.
_base_ = ['./local_vim_tiny.py']

model = dict(name='local_vim_small')
