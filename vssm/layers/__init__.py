"""Reusable mixers and blocks shared by the model families.

- ``mamba_mixer``: Mamba over a 1-D token sequence, forward or forward + backward (Vim, VideoMamba).
- ``ss2d``: SS2D, the 2-D multi-direction mixer; the scan order is its ``path_kind`` argument (VMamba 'cross',
  LocalVMamba 'local').
- ``local_mixer``: LocalVim's mixer and the route / un-route nodes it runs on.
- ``zigzag_mixer``: PlainMamba's zig-zag mixer with direction tokens.
- ``simba_mixer``: the causal Mamba (v1) mixer of SiMBA.
- ``ssm_init``: the SSM parameters (A_log, D, dt projection), their initialisation and dtype rule, for every mixer.
- ``pos_embed``: 2-D RoPE, class-token layouts and position-embedding resampling.
- ``norm``, ``einfft``, ``monarch``: norms and channel mixers.
"""
