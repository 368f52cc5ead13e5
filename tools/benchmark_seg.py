"""Segmentation nets' training speed, peak memory and sliding-window inference time, beside their plain peers in the
same run.

    python tools/benchmark_seg.py --suite umamba [--out results.json]     # U-Mamba against nnU-Net's residual U-Net
    python tools/benchmark_seg.py --suite zoo                             # zoo-encoder nets against smp U-Nets

``umamba``: U-Mamba_Bot and U-Mamba_Enc at typical nnU-Net plans (3-D: patch 128^3, 6 stages 32..320, batch 2; 2-D:
patch 512^2, 8 stages 32..512, batch 12; 3x3(x3) kernels, the first stride 1 and then 2 on every axis, 2 blocks per
stage, as the plans that U-Mamba's trainers read), against dynamic-network-architectures' ``ResidualEncoderUNet`` (what
nnU-Net's residual-encoder plans build) with the same stages, features, kernels, strides and block counts.
``zoo``: the zoo-encoder nets of ``vssm.seg.nets`` at 256^2 (batch 32) and Swin-UMamba at 512^2, against
segmentation_models_pytorch's U-Net on timm's ConvNeXt-T and Swin-T encoders.

Training: forward, cross-entropy on every deep-supervision output (targets at each output's size), backward, gradient
clipping at norm 12 and an SGD (momentum 0.99, Nesterov) step, as nnU-Net's step, under bf16 autocast; iterations and
images per second from CUDA events over ``--iters`` steps after ``--warmup``, peak allocated memory. Inference
(``umamba``): one volume (3-D: 1x192x256x256; 2-D: 1x1024x1024) through ``vssm.seg.sliding_window_predict``
(nnU-Net's step 0.5 and Gaussian, no mirroring), seconds per volume, with the net's initial weights (the timed steps
train on random targets, which need not stay finite); non-finite logits are an error.
"""
import argparse
import gc
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vssm  # noqa: E402,F401  (registers the zoo)
from benchmark import _timed  # noqa: E402  (tools/benchmark.py: CUDA-event milliseconds per step)
from vssm.seg.nets import build_seg_net  # noqa: E402
from vssm.seg.plans import NetworkPlan  # noqa: E402
from vssm.seg.sliding_window import sliding_window_predict  # noqa: E402


def typical_plan(dim: int) -> tuple[NetworkPlan, tuple, int, tuple]:
    """(network, patch size, batch, inference volume size) of a typical nnU-Net plan of ``dim`` axes."""
    if dim == 3:
        n, top, patch, batch, volume = 6, 320, (128, 128, 128), 2, (192, 256, 256)
    else:
        n, top, patch, batch, volume = 8, 512, (512, 512), 12, (1024, 1024)
    features = tuple(min(32 * 2 ** i, top) for i in range(n))
    return (NetworkPlan(n_stages=n, features_per_stage=features, kernel_sizes=((3,) * dim,) * n,
                        strides=((1,) * dim,) + ((2,) * dim,) * (n - 1), n_conv_per_stage_encoder=(2,) * n,
                        n_conv_per_stage_decoder=(2,) * (n - 1), dim=dim), patch, batch, volume)


def residual_unet(network: NetworkPlan, in_channels: int, num_classes: int) -> nn.Module:
    """dynamic-network-architectures' ResidualEncoderUNet of the plan, with nnU-Net's norm and activation."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if network.dim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return ResidualEncoderUNet(
        in_channels, network.n_stages, list(network.features_per_stage), conv, [list(k) for k in network.kernel_sizes],
        [list(s) for s in network.strides], list(network.n_conv_per_stage_encoder), num_classes,
        list(network.n_conv_per_stage_decoder), conv_bias=True, norm_op=norm,
        norm_op_kwargs=dict(eps=1e-5, affine=True), nonlin=nn.LeakyReLU, nonlin_kwargs=dict(inplace=True),
        deep_supervision=True)


def smp_unet(encoder: str, in_channels: int, num_classes: int, size: int) -> nn.Module:
    """segmentation_models_pytorch's U-Net on a timm encoder (``tu-<name>``)."""
    import segmentation_models_pytorch as smp

    kwargs = dict(img_size=size) if "swin" in encoder else {}
    return smp.Unet(encoder_name=f"tu-{encoder}", encoder_weights=None, in_channels=in_channels, classes=num_classes,
                    **kwargs)


@dataclass
class Case:
    """One net at one patch size."""
    label: str
    build: Callable[[], nn.Module]
    in_channels: int
    num_classes: int
    patch: tuple
    batch: int
    volume: Optional[tuple] = None  # sliding-window inference on one image of this size
    notes: dict = field(default_factory=dict)


def suites() -> dict[str, list[Case]]:
    """The speed tables of the medical segmentation issues."""
    umamba = []
    for dim in (3, 2):
        network, patch, batch, volume = typical_plan(dim)
        for name in ("umamba_bot", "umamba_enc"):
            umamba.append(Case(f"{name} {dim}d", lambda name=name, network=network, patch=patch: build_seg_net(
                name, network, 1, 14, patch), 1, 14, patch, batch, volume))
        umamba.append(Case(f"ResidualEncoderUNet {dim}d", lambda network=network: residual_unet(network, 1, 14), 1, 14,
                           patch, batch, volume))
    zoo = []
    plan2d = typical_plan(2)[0]
    for name, encoder in (("vm_unet", "vmamba_tiny_v0"), ("swin_umamba", "vmamba_tiny_v0"),
                          ("upernet", "vmamba_tiny"), ("fpn", "vmamba_tiny"), ("upernet", "simba_s"),
                          ("fpn", "local_vmamba_tiny")):
        zoo.append(Case(f"{name} ({encoder})", lambda name=name, encoder=encoder: build_seg_net(
            name, plan2d, 3, 9, (256, 256), encoder_name=encoder), 3, 9, (256, 256), 32))
    for encoder in ("convnext_tiny", "swin_tiny_patch4_window7_224"):
        zoo.append(Case(f"smp Unet (tu-{encoder})", lambda encoder=encoder: smp_unet(encoder, 3, 9, 256), 3, 9,
                        (256, 256), 32))
    zoo.append(Case("swin_umamba (vmamba_tiny_v0) 512", lambda: build_seg_net(
        "swin_umamba", plan2d, 3, 9, (512, 512), encoder_name="vmamba_tiny_v0"), 3, 9, (512, 512), 8))
    zoo.append(Case("smp Unet (tu-convnext_tiny) 512", lambda: smp_unet("convnext_tiny", 3, 9, 512), 3, 9, (512, 512),
                    8))
    return {"umamba": umamba, "zoo": zoo}


def _outputs(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def measure(case: Case, args) -> dict:
    """Training iterations/s, images/s, peak memory and (with ``volume``) sliding-window seconds per volume."""
    row = dict(name=case.label, patch=list(case.patch), batch=case.batch)
    model = step = optimizer = None
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = case.build().cuda().train()
        row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(case.batch, case.in_channels, *case.patch, device="cuda")
        with torch.no_grad():  # the output sizes, from an eval pass (batch norm cannot train on one image)
            sizes = [o.shape[2:] for o in _outputs(model.eval()(x[:1]))]
        model.train()
        targets = [torch.randint(0, case.num_classes, (case.batch, *s), device="cuda") for s in sizes]
        initial = {key: value.clone() for key, value in model.state_dict().items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        torch.cuda.reset_peak_memory_stats()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                outs = _outputs(model(x))
            loss = sum(F.cross_entropy(o.float(), t) for o, t in zip(outs, targets))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        ms = _timed(step, args.warmup, args.iters)
        row.update(train_ms=ms, train_it_s=1000 / ms, train_img_s=case.batch * 1000 / ms,
                   train_peak_GiB=torch.cuda.max_memory_allocated() / 2 ** 30)
        if case.volume is not None and not args.skip_inference:
            model.load_state_dict(initial)
            model.eval()
            if hasattr(model, "decoder") and hasattr(model.decoder, "deep_supervision"):
                model.decoder.deep_supervision = False
            image = torch.randn(case.in_channels, *case.volume, device="cuda")

            def predictor(patches):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    return _outputs(model(patches))[0].float()

            logits = sliding_window_predict(image, predictor, case.patch)  # warm-up
            if not torch.isfinite(logits).all():
                raise FloatingPointError("non-finite logits in the sliding window with the initial weights")
            torch.cuda.synchronize()
            start = time.perf_counter()
            sliding_window_predict(image, predictor, case.patch)
            torch.cuda.synchronize()
            row["infer_s_per_volume"] = time.perf_counter() - start
    except torch.OutOfMemoryError:
        row["train_it_s"] = "OOM"
    except Exception as exc:  # record why, go on with the table
        row["train_it_s"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        model = step = optimizer = None  # noqa: F841
        gc.collect()
    print(json.dumps(row), flush=True)
    return row


def _fmt(value, digits=1):
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value if value is not None else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", default=["umamba"], choices=sorted(suites()))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--only", nargs="*", help="run only the cases whose label contains one of these strings")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmark_seg.py measures a CUDA device; none is available")
    torch.backends.cudnn.benchmark = True
    results = {}
    for suite in args.suite:
        cases = [c for c in suites()[suite] if not args.only or any(key in c.label for key in args.only)]
        rows = results[suite] = [measure(case, args) for case in cases]
        print(f"\n{suite}: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, {date.today()}")
        print("| net | patch x batch | params (M) | train it/s | img/s | peak GiB | sliding window s/volume |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            patch = "x".join(map(str, row["patch"]))
            print(f"| {row['name']} | {patch} x {row['batch']} | {_fmt(row.get('params_M'))} | "
                  f"{_fmt(row.get('train_it_s'), 2)} | {_fmt(row.get('train_img_s'))} | "
                  f"{_fmt(row.get('train_peak_GiB'), 2)} | {_fmt(row.get('infer_s_per_volume'), 2)} |")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           python=platform.python_version(), date=str(date.today()), results=results), file, indent=1)


if __name__ == "__main__":
    main()
