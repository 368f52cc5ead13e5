"""LocalMamba: LocalVMamba (hierarchical) and LocalVim (plain) with searched local-window scan routes.

Paper: `LocalMamba: Visual State Space Model with Windowed Selective Scan` - https://arxiv.org/abs/2403.09338

@article{huang2024localmamba,
  title={LocalMamba: Visual State Space Model with Windowed Selective Scan},
  author={Huang, Tao and Pei, Xiaohuan and You, Shan and Wang, Fei and Qian, Chen and Xu, Chang},
  journal={arXiv preprint arXiv:2403.09338},
  year={2024}
}

Original code and weights: https://github.com/hunto/LocalMamba (Apache-2.0), commit 75e5d1f. Re-implemented for vssm on
``vssm.ops.multi_scan`` (LocalVMamba) and ``vssm.ops.selective_scan`` (LocalVim).

Every block scans its tokens along 4 routes picked by the paper's search from ``h`` (row-major), ``v``
(column-major), ``w2`` / ``w7`` (2x2 / 7x7 windows in row-major order, the map zero-padded to a multiple of the window
and the padding scanned as real zero tokens) and their reversed ``_flip`` versions. The routes are merged by a channel
attention per route, then summed (``vssm.layers.ss2d.RouteChannelAttention``).

- LocalVMamba (``local_vmamba_tiny/small``): Vanilla VMamba (v0) with ``SS2D(path_kind='local')`` mixers, built by
  ``vssm.models.vmamba.VMamba`` with per-block ``directions``.
- LocalVim (``local_vim_tiny``, ``local_vim_tiny_midcls``, ``local_vim_small``): a Vim-style plain model (16x16
  patches, absolute position embedding, RoPE on the hidden and residual streams or a middle class token, fused
  add + RMSNorm pre-norm blocks) whose mixer runs Mamba (causal conv, scan, SiLU(z) gate) along each route. Its
  routes are materialised and scanned by one ``selective_scan`` over K * d_inner channels: the causal conv runs in route
  order and turns the window padding into non-zero scan inputs, which a path-gathering ``multi_scan`` (padding =
  zero inputs) cannot express. ``dynamic_img_size=True`` accepts any input size (the official model does so for
  detection): the image is padded to the patch grid, the position embedding resampled, RoPE computed for the grid.

Faithful to the official code, with the quirks it needs for its weights:
- The ``v`` / ``v_flip`` un-scan is the official (H, W)-for-(W, H) reshape, wrong on non-square maps;
  ``reproduce_v_unscan_bug=False`` gives the correct inverse.
- LocalVim ties A across the routes of a layer: the official ``A_log_0..3`` are four Parameters wrapping one tensor,
  so a loaded checkpoint runs every route with ``A_log_3``. We store the four copies (the official parameter count
  counts them) and, with ``tie_route_A=True`` (default), run every route with their mean: the converter writes
  ``A_log_3`` into all four, and equal copies get equal gradients, so they stay equal. ``tie_route_A=False`` gives
  each route its own A.
- ``local_vim_small`` is defined twice upstream; the registered (second) definition, used here, scans
  ('h', 'h_flip', 'w2', 'w2_flip') in every layer. No LocalVim-S weights are released (the README's link is the
  LocalVMamba-S file), nor LocalVMamba-T weights.
- LocalVim's official effective init (timm's trunc-normal over every Linear after Mamba's init) leaves the dt
  projections at trunc-normal(0.02) weights and zero biases; we initialise the same way.

Drop path: LocalVMamba follows VMamba (linear 0..drop_path_rate over all blocks, as the official code); LocalVim
follows the official Vim-style schedule (layer i > 0 drops its input branch with linspace(0, rate, depth)[i - 1], the
final add before the last norm the full rate). Official training: 0.1 for LocalVim-T; our default is 0 for every
variant.

The mixer and the routing live in ``vssm.layers.local_mixer``, RoPE and the position-embedding resampler in
``vssm.layers.pos_embed``.
"""
import functools
import math
from typing import Dict, Final, List, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vssm.convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from vssm.layers.checks import check_batched_input
from vssm.layers.local_mixer import LocalMambaMixer, LocalVimBlock
from vssm.layers.norm import RmsNorm
from vssm.layers.pos_embed import apply_rope, resample_pos_embed, rope_tables

from .vmamba import VMamba, checkpoint_filter_fn as vmamba_filter_fn, convert_official_vssm, official_vssm_args

__all__ = ["LocalVim", "checkpoint_filter_fn"]


class LocalVim(nn.Module):
    """LocalVim: plain (isotropic) Vim-style model with LocalMamba mixers (see the module docstring)."""
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 192,
            directions: Sequence[Sequence[str]] = (("h", "h_flip", "v", "v_flip"),) * 20,
            d_state: int = 16,
            use_rope: bool = True,
            middle_cls_token: bool = False,
            tie_route_A: bool = True,
            reproduce_v_unscan_bug: bool = True,
            dynamic_img_size: bool = False,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Input size the position embedding is built for.
            patch_size: Patch size.
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: 'avg' (mean over all tokens), 'token' (the middle class token) or '' (no pooling).
            embed_dim: Token width.
            directions: One list of 4 local route names per layer (the depth is its length).
            d_state: SSM state size.
            use_rope: Rotary position embedding on the hidden and residual streams before every layer.
            middle_cls_token: A class token inserted at the middle of the patch sequence (and of every route).
            tie_route_A: Run every route of a layer with one A, as the official model does (see the module docstring).
            reproduce_v_unscan_bug: Official 'v' un-scan (wrong on non-square grids).
            dynamic_img_size: Accept any input size (padded to a patch multiple, as the official model does): the
                position embedding is resampled (bicubic, class slot kept) and RoPE computed for the token grid.
            norm_eps: RMSNorm epsilon.
            drop_rate: Dropout after the position embedding and before the classifier.
            drop_path_rate: Stochastic depth; layer i (>0) drops its input branch with rate linspace(0, rate)[i-1],
                the final add uses the full rate, as the official code does.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if use_rope and middle_cls_token:
            raise ValueError("LocalVim uses either RoPE or a middle class token, not both (as the official variants)")
        if global_pool not in ("", "avg", "token") or (global_pool == "token" and not middle_cls_token):
            raise ValueError(f"global_pool must be '', 'avg' or ('token' with middle_cls_token), got {global_pool!r}")
        depth = len(directions)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if middle_cls_token else 0
        self.use_rope = use_rope
        self.middle_cls_token = middle_cls_token
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC", strict_img_size=not dynamic_img_size,
            dynamic_img_pad=dynamic_img_size, **dd,
        )
        self.grid_size = list(self.patch_embed.grid_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd)) if middle_cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(drop_rate)
        rope_cos, rope_sin = rope_tables(embed_dim, self.grid_size, 14, device) if use_rope else (torch.empty(0),) * 2
        self.register_buffer("rope_cos", rope_cos.to(device=device), persistent=False)
        self.register_buffer("rope_sin", rope_sin.to(device=device), persistent=False)

        rates = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([
            LocalVimBlock(
                embed_dim,
                LocalMambaMixer(
                    embed_dim, directions[i], d_state=d_state, middle_cls_token=middle_cls_token,
                    tie_route_A=tie_route_A, reproduce_v_unscan_bug=reproduce_v_unscan_bug, **dd,
                ),
                drop_path=rates[i],
                norm_eps=norm_eps,
                **dd,
            )
            for i in range(depth)
        ])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.final_drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm = RmsNorm(embed_dim, eps=norm_eps, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for block in self.blocks:
            block.mixer.reset_parameters(depth)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token", "*.A_log", "*.D", "*.dt_proj_bias"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ("", "avg", "token") or (global_pool == "token" and not self.middle_cls_token):
                raise ValueError(f"global_pool must be '', 'avg' or 'token' (middle class token), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device, dtype = self.pos_embed.device, self.pos_embed.dtype
        self.head = nn.Linear(self.embed_dim, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()

    def _resampled_pos_embed(self, grid: List[int]) -> Tensor:
        """Position embedding (1, T, C) for a token grid: the patch part resampled (bicubic), the class slot kept."""
        if grid == self.grid_size:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.grid_size, "middle" if self.middle_cls_token else "none")

    def _embed(self, x: Tensor) -> Tuple[Tensor, List[int]]:
        """(B, C, H, W) images -> (tokens (B, T, C) with the class token and position embedding, token grid)."""
        check_batched_input(x, 2, self.in_chans)
        x = self.patch_embed(x)  # (B, h, w, C)
        grid = [x.shape[1], x.shape[2]] if self.dynamic_img_size else self.grid_size  # static ints for FX
        x = x.flatten(1, 2)
        cls_index = (grid[0] * grid[1]) // 2
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :cls_index], cls, x[:, cls_index:]], dim=1)
        return self.pos_drop(x + self._resampled_pos_embed(grid)), grid

    def _rope_streams(self, hidden: Tensor, residual: Optional[Tensor], grid: List[int]
                      ) -> Tuple[Tensor, Optional[Tensor]]:
        """RoPE before a layer, on the hidden stream and (the official ``if_rope_residual``) the residual stream."""
        if self.use_rope:
            if grid == self.grid_size:
                cos, sin = self.rope_cos, self.rope_sin
            else:
                cos, sin = rope_tables(self.embed_dim, grid, 14, hidden.device)
            hidden = apply_rope(hidden, cos, sin)
            if residual is not None:
                residual = apply_rope(residual, cos, sin)
        return hidden, residual

    def _final_norm(self, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        if residual is None:  # no block ran (all pruned): the official fused add + norm starts from hidden
            return self.norm(hidden.float()).to(hidden.dtype)
        return self.norm(residual + self.final_drop_path(hidden)).to(hidden.dtype)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Mixer outputs of the selected layers (what the official detection/segmentation backbone taps).

        Args:
            x: (B, C, H, W) images.
            indices: Last n layers if int, all if None, else the layer indices to return.
            norm: Apply the final RMSNorm to the intermediates.
            stop_early: Stop after the last requested layer.
            output_fmt: 'NCHW' (patch tokens as a map, class token dropped) or 'NLC' (all tokens).
            intermediates_only: Return only the intermediates.

        Returns:
            (final features as ``forward_features`` returns them, [intermediates]) or the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        hidden, grid = self._embed(x)
        residual: Optional[Tensor] = None
        cls_index = (grid[0] * grid[1]) // 2
        intermediates = []
        for i, block in enumerate(blocks):
            hidden, residual = self._rope_streams(hidden, residual, grid)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden, residual = checkpoint(block, hidden, residual, grid, use_reentrant=False)
            else:
                hidden, residual = block(hidden, residual, grid)
            if i in take_indices:
                feat = self.norm(hidden) if norm else hidden
                if output_fmt == "NCHW":
                    if self.cls_token is not None:
                        feat = torch.cat([feat[:, :cls_index], feat[:, cls_index + 1:]], dim=1)
                    feat = feat.transpose(1, 2).unflatten(-1, grid)
                intermediates.append(feat)
        if intermediates_only:
            return intermediates
        return self._final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the layers after the last index in ``indices`` (and the norm / head on request)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> normalised tokens (B, T, C)."""
        hidden, grid = self._embed(x)
        residual: Optional[Tensor] = None
        for block in self.blocks:
            hidden, residual = self._rope_streams(hidden, residual, grid)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden, residual = checkpoint(block, hidden, residual, grid, use_reentrant=False)
            else:
                hidden, residual = block(hidden, residual, grid)
        return self._final_norm(hidden, residual)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, (x.shape[1] - 1) // 2]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_PER_ROUTE = ("conv1d", "x_proj", "dt_proj", "A_log", "D")


def convert_official_local_vim(state_dict: Dict[str, Tensor], model: LocalVim) -> Dict[str, Tensor]:
    """Official ``VisionMamba`` (local_vim.py) state dict -> ``LocalVim`` keys.

    Per-route tensors are stacked (``conv1d_k``, ``x_proj_k``, ``dt_proj_k``, ``A_log_k``, ``D_k`` -> one tensor with
    a leading route axis); every route gets ``A_log`` of the last route, which is what the official model runs with
    (its A_log_k share one tensor, the last loaded wins). The RoPE tables are dropped (the model computes them) and
    ``pos_embed`` is resampled to the model's grid when it differs.
    """
    out, per_route = {}, {}
    for key, value in state_dict.items():
        if key in ("rope.freqs_cos", "rope.freqs_sin"):
            continue
        key = key.replace("layers.", "blocks.", 1) if key.startswith("layers.") else key
        key = "norm.weight" if key == "norm_f.weight" else key
        parts = key.split(".")
        if len(parts) >= 4 and parts[2] == "mixer" and parts[3].rsplit("_", 1)[-1].isdigit():
            name, route = parts[3].rsplit("_", 1)  # e.g. 'x_proj', '2'
            if name not in _PER_ROUTE:
                raise ValueError(f"unexpected per-route key {key!r} (known: {_PER_ROUTE})")
            suffix = "_" + parts[4] if len(parts) > 4 else ""  # conv1d_k.weight -> conv1d_weight
            per_route.setdefault(".".join(parts[:3] + [name + suffix]), {})[int(route)] = value
        else:
            out[key] = value
    for key, routes in per_route.items():
        stacked = torch.stack([routes[k] for k in sorted(routes)])
        if key.endswith(".A_log"):
            stacked = stacked[-1:].expand_as(stacked).clone()
        elif key.endswith(".conv1d_weight"):
            stacked = stacked.squeeze(2)  # (K, d_inner, 1, d_conv) -> (K, d_inner, d_conv)
        out[key] = stacked
    return _fit_pos_embed(out, model)


def _fit_pos_embed(state_dict: Dict[str, Tensor], model: LocalVim) -> Dict[str, Tensor]:
    """Resample a checkpoint's ``pos_embed`` (square grid, as every released one) to the model's token grid."""
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        side = math.isqrt(pos_embed.shape[1] - model.num_prefix_tokens)
        state_dict = dict(state_dict, pos_embed=resample_pos_embed(
            pos_embed, model.grid_size, [side, side], "middle" if model.middle_cls_token else "none"))
    return state_dict


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Official LocalVMamba / LocalVim checkpoints ({'state_dict' | 'model': ...}, 'module.' prefixes) -> ours."""
    if isinstance(model, VMamba):
        return vmamba_filter_fn(state_dict, model)
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith("blocks.") for k in state_dict):
        return _fit_pos_embed(state_dict, model)
    return convert_official_local_vim(state_dict, model)


_OFFICIAL_VIM_IGNORED = ("bimamba_type", "rms_norm", "residual_in_fp32", "fused_add_norm", "pt_hw_seq_len",
                         "if_abs_pos_embed", "final_pool_type")


def _official_local_vim_args(kwargs: dict) -> dict:
    """Official ``VisionMamba(**kwargs)`` (local_vim.py, mamba_cls=MultiMamba) -> ``LocalVim`` arguments."""
    kwargs = dict(kwargs)
    for name, supported in dict(rms_norm=True, fused_add_norm=True, residual_in_fp32=True, if_abs_pos_embed=True,
                                pt_hw_seq_len=14).items():
        if kwargs.get(name, supported) != supported:
            raise ValueError(f"official LocalVim setting {name}={kwargs[name]!r} is not supported (only {supported!r})")
    use_rope = kwargs.pop("if_rope", False)
    if kwargs.pop("if_rope_residual", use_rope) != use_rope:
        raise ValueError("official LocalVim: RoPE is supported on both streams only (if_rope == if_rope_residual)")
    middle_cls = kwargs.pop("use_middle_cls_token", False)
    if kwargs.pop("if_cls_token", False) != middle_cls:
        raise ValueError("official LocalVim: a class token is supported only in the middle (use_middle_cls_token)")
    pool = kwargs.get("final_pool_type", "mean")
    if not middle_cls and pool != "mean":
        raise ValueError(f"official LocalVim final_pool_type {pool!r} is not supported (only 'mean')")
    if kwargs.get("directions") is None:
        raise ValueError("official LocalVim without directions is the search supernet, which is not supported")
    for name in _OFFICIAL_VIM_IGNORED:
        kwargs.pop(name, None)
    args = dict(
        img_size=kwargs.pop("img_size", 224), patch_size=kwargs.pop("patch_size", 16),
        in_chans=kwargs.pop("channels", 3), num_classes=kwargs.pop("num_classes", 1000),
        global_pool="token" if middle_cls else "avg", embed_dim=kwargs.pop("embed_dim", 192),
        directions=[list(route) for route in kwargs.pop("directions")], use_rope=use_rope,
        middle_cls_token=middle_cls, norm_eps=kwargs.pop("norm_epsilon", 1e-5), drop_rate=kwargs.pop("drop_rate", 0.0),
        drop_path_rate=kwargs.pop("drop_path_rate", 0.1),
    )
    if kwargs.pop("depth", len(args["directions"])) != len(args["directions"]):
        raise ValueError("official LocalVim: depth must equal the number of direction lists")
    if kwargs:
        raise ValueError(f"unknown official LocalVim arguments: {sorted(kwargs)}")
    return args


@register_official("localvmamba")
def _build_official(kwargs: dict, entry: Optional[str] = None):
    """``load_official('localvmamba', ...)``: entry 'VSSM' (local_vmamba.py) or 'VisionMamba' (local_vim.py).

    Without an entry, the kwargs decide (``embed_dim`` belongs to VisionMamba).
    """
    plain = "embed_dim" in kwargs if entry is None else ("VisionMamba" in entry or "local_vim" in entry)
    if plain:
        model = LocalVim(**_official_local_vim_args(kwargs))
        return model, functools.partial(convert_official_local_vim, model=model)
    kwargs = dict(kwargs)
    directions = kwargs.pop("directions", None)
    if directions is None:
        raise ValueError("official LocalVMamba without directions is the search supernet, which is not supported")
    for name, supported in dict(ssm_simple_init=False, d_state=16).items():
        kwargs.pop(name, supported)  # initialisation only / swallowed by the official VSSM
    kwargs.setdefault("drop_path_rate", 0.1)
    args = official_vssm_args(dict(kwargs, forward_type="v02", mlp_ratio=0.0, downsample_version="v1",
                                   patchembed_version="v1"))
    return VMamba(**args, directions=[list(route) for route in directions]), convert_official_vssm


def _create_local_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    return build_model_with_cfg(
        VMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _create_local_vim(variant: str, pretrained: bool = False, **kwargs) -> LocalVim:
    return build_model_with_cfg(
        LocalVim, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _routes(*layers: str) -> Tuple[Tuple[str, ...], ...]:
    """Route sets written compactly: 'h h_flip w7 w7_flip' -> ('h', 'h_flip', 'w7', 'w7_flip')."""
    return tuple(tuple(layer.split()) for layer in layers)


# The searched route sets, one per block in order (the paper's Figure / the official factories).
LOCAL_VMAMBA_TINY_ROUTES = _routes(
    "h h_flip w7 w7_flip", "h_flip v_flip w2 w2_flip",  # stage 1
    "h_flip v_flip w2_flip w7", "h_flip v v_flip w2",  # stage 2
    "h h_flip v_flip w2_flip", "h_flip v_flip w2 w2_flip", "h w2_flip w7 w7_flip", "h h_flip v v_flip",  # stage 3
    "h v_flip w7 w7_flip", "h_flip v w2 w7_flip", "v v_flip w2 w7_flip", "h h_flip v_flip w2_flip",
    "v_flip w2_flip w7 w7_flip",
    "h_flip v_flip w2_flip w7_flip", "h_flip v w7 w7_flip",  # stage 4
)
LOCAL_VMAMBA_SMALL_ROUTES = _routes(
    "h v v_flip w7_flip", "h h_flip v w7",  # stage 1
    "h_flip v v_flip w7", "h_flip v w2_flip w7",  # stage 2
    "h_flip v w2_flip w7", "h_flip v_flip w2 w7_flip", "h_flip v v_flip w7", "h v v_flip w7",  # stage 3
    "h v v_flip w7", "h v v_flip w7_flip", "h h_flip v v_flip", "h v v_flip w2", "v v_flip w2_flip w7",
    "h h_flip v w2", "h_flip v v_flip w7_flip", "h h_flip v v_flip", "h v v_flip w7_flip", "h v v_flip w7_flip",
    "h h_flip v_flip w7", "h_flip v_flip w2_flip w7", "h_flip v v_flip w7_flip", "v v_flip w7 w7_flip",
    "h v v_flip w7_flip", "h_flip v v_flip w2", "h v v_flip w2_flip", "h h_flip v w7", "h h_flip w7 w7_flip",
    "h v_flip w2 w2_flip", "h v_flip w2 w7", "h v v_flip w7_flip", "h_flip v w2_flip w7",
    "h_flip v_flip w7 w7_flip", "h v w7 w7_flip",  # stage 4
)
LOCAL_VIM_TINY_ROUTES = _routes(
    "h v_flip w7 w7_flip", "h_flip w2_flip w7 w7_flip", "h h_flip v w7", "h h_flip v v_flip", "h h_flip v v_flip",
    "h h_flip v v_flip", "h_flip v v_flip w7", "h_flip v v_flip w2_flip", "h h_flip v v_flip", "h h_flip v v_flip",
    "h v v_flip w2", "h v v_flip w2_flip", "h h_flip v_flip w7", "h_flip v v_flip w2", "h h_flip v v_flip",
    "h v w2 w2_flip", "v v_flip w2 w7", "h h_flip v w2", "h h_flip w2_flip w7", "v v_flip w2 w2_flip",
)
LOCAL_VIM_SMALL_ROUTES = _routes(*["h h_flip w2 w2_flip"] * 20)  # not searched (the registered definition)

# LocalVMamba is Vanilla VMamba (v0) with a searched SS2D(path_kind='local') per block.
_LOCAL_VMAMBA = dict(d_state=16, ssm_ratio=2.0, gated=True, conv_bias=True, mlp_ratio=0.0, stem="patchify",
                     downsample="patch_merging", dims=(96, 192, 384, 768))
MODEL_VARIANTS: Dict[str, dict] = dict(
    local_vmamba_tiny=dict(_LOCAL_VMAMBA, depths=(2, 2, 9, 2), directions=LOCAL_VMAMBA_TINY_ROUTES),
    local_vmamba_small=dict(_LOCAL_VMAMBA, depths=(2, 2, 27, 2), directions=LOCAL_VMAMBA_SMALL_ROUTES),
    local_vim_tiny=dict(embed_dim=192, directions=LOCAL_VIM_TINY_ROUTES, use_rope=True),
    local_vim_tiny_midcls=dict(embed_dim=192, directions=LOCAL_VIM_TINY_ROUTES, use_rope=False,
                               middle_cls_token=True, global_pool="token"),
    local_vim_small=dict(embed_dim=384, directions=LOCAL_VIM_SMALL_ROUTES, use_rope=True),
    test_local_vmamba=dict(_LOCAL_VMAMBA, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
                           directions=LOCAL_VMAMBA_TINY_ROUTES[:5]),
    test_local_vim=dict(img_size=32, patch_size=8, embed_dim=32, directions=LOCAL_VIM_TINY_ROUTES[:3],
                        use_rope=False, middle_cls_token=True, global_pool="token"),
)


_RELEASES = "https://github.com/hunto/LocalMamba/releases/download/v1.0.0/"


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "head.fc",
        "license": "apache-2.0", "paper_ids": "arXiv:2403.09338",
        "paper_name": "LocalMamba: Visual State Space Model with Windowed Selective Scan",
        "origin_url": "https://github.com/hunto/LocalMamba",
        **kwargs,
    }


def _vim_cfg(url: str = "", **kwargs) -> dict:
    return _cfg(url, pool_size=None, fixed_input_size=True, first_conv="patch_embed.proj", classifier="head", **kwargs)


default_cfgs = generate_default_cfgs({
    "local_vmamba_tiny": _cfg(notes="no official weights released (upstream issues #40, #42)"),
    "local_vmamba_small.in1k": _cfg(_RELEASES + "local_vssm_small.ckpt"),
    "local_vim_tiny.in1k": _vim_cfg(_RELEASES + "local_vim_tiny.ckpt"),
    "local_vim_tiny_midcls.in1k": _vim_cfg(_RELEASES + "local_vim_tiny_middle_cls_token.ckpt"),
    "local_vim_small": _vim_cfg(notes="no official weights released (the README link is LocalVMamba-S, issue #43)"),
    "test_local_vmamba": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
    "test_local_vim": _vim_cfg(input_size=(3, 32, 32)),
})


@register_model
def local_vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """LocalVMamba-T: 25.5M params, 5.7 GFLOPs, 82.7 top-1 (no weights released)."""
    return _create_local_vmamba("local_vmamba_tiny", pretrained, **kwargs)


@register_model
def local_vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """LocalVMamba-S: 49.7M params, 11.4 GFLOPs, 83.7 top-1."""
    return _create_local_vmamba("local_vmamba_small", pretrained, **kwargs)


@register_model
def local_vim_tiny(pretrained: bool = False, **kwargs) -> LocalVim:
    """LocalVim-T: 8.0M params, 1.5 GFLOPs, 76.2 top-1."""
    return _create_local_vim("local_vim_tiny", pretrained, **kwargs)


@register_model
def local_vim_tiny_midcls(pretrained: bool = False, **kwargs) -> LocalVim:
    """LocalVim-T with a middle class token and no RoPE: 8.0M params, 1.5 GFLOPs, 77.8 top-1."""
    return _create_local_vim("local_vim_tiny_midcls", pretrained, **kwargs)


@register_model
def local_vim_small(pretrained: bool = False, **kwargs) -> LocalVim:
    """LocalVim-S: 27.8M params, 4.8 GFLOPs, 81.1 top-1 (no weights released)."""
    return _create_local_vim("local_vim_small", pretrained, **kwargs)


@register_model
def test_local_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """Tiny LocalVMamba for tests (random weights)."""
    return _create_local_vmamba("test_local_vmamba", pretrained, **kwargs)


@register_model
def test_local_vim(pretrained: bool = False, **kwargs) -> LocalVim:
    """Tiny LocalVim (middle class token) for tests (random weights)."""
    return _create_local_vim("test_local_vim", pretrained, **kwargs)
