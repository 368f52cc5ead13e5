# LocalVMamba-S (hunto/LocalMamba): 83.7 top-1 published. LocalVMamba-T's recipe.
_base_ = ['./local_vmamba_tiny.py']

model = dict(name='local_vmamba_small')
