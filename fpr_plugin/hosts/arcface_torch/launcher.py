"""``python -m fpr_plugin.hosts.arcface_torch --root PATH CONFIG --loss NAME [--set key=value ...]``.

Runs arcface_torch's own, unchanged ``train_v2.py`` (one process, or every
process of ``torchrun --nproc_per_node=N -m fpr_plugin.hosts.arcface_torch ...``)
with a registered loss in place of ``CombinedMarginLoss``. CONFIG is the
host's ``configs/NAME`` or one of fpr_plugin's recipes (translated to the
host's keys). User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from typing import Sequence

from fpr_plugin.hosts.arcface_torch.checkout import HostError, check_root, import_host_module, use_root

__all__ = ["build_parser", "main"]

PROG = "python -m fpr_plugin.hosts.arcface_torch"


def build_parser() -> argparse.ArgumentParser:
    """The launcher's command-line parser."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("config", help="the host's configs/NAME, or an fpr_plugin recipe such as recipes/bupt_balancedface_r34.py")
    parser.add_argument("--root", required=True, help="the arcface_torch folder of an insightface checkout (recognition/arcface_torch)")
    parser.add_argument("--loss", help="registered loss for the margin-loss slot: fpr_penalty, fpr_penalty_tface, cosface, arcface, combined")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config key (repeatable), e.g. --set loss_params.gamma_u=1e-4 --set sample_rate=0.3")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cpu: stand in for the host's CUDA-only calls with gloo and CPU ones (default: cpu when no GPU)")
    parser.add_argument("--mxnet-standin", action="store_true",
                        help="read .rec files with fpr_plugin's mxnet stand-in when mxnet is not importable")
    parser.add_argument("--dry-run", action="store_true", help="print the config train_v2.py would get, and stop")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise HostError("--device cuda: no CUDA device is visible (use --device cpu)")
    return choice


def _prepare_data_modules(root, use_standin: bool) -> None:
    from fpr_plugin.hosts.arcface_torch import mxnet_standin

    if use_standin:
        mxnet_standin.install()
    elif not mxnet_standin._mxnet_importable():
        raise HostError(
            "arcface_torch's dataset.py imports mxnet, which is not importable here (mxnet 1.x needs numpy<1.24): "
            "install mxnet, or pass --mxnet-standin to read .rec files with fpr_plugin's reader"
        )


def run(args: argparse.Namespace) -> int:
    """Resolve the config, install the loss, and run the host's ``train_v2.py`` as ``__main__``."""
    from fpr_plugin.hosts.arcface_torch.config import resolve_config
    from fpr_plugin.hosts.arcface_torch.install import install

    root = check_root(args.root)
    use_root(root)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg, notices = resolve_config(root, args.config, args.loss, args.overrides, world_size)
    if args.dry_run:
        print(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        return 0
    device = _device(args.device)
    _prepare_data_modules(root, args.mxnet_standin)
    if device == "cpu":
        from fpr_plugin.hosts.arcface_torch.cpu import enable_cpu

        enable_cpu(import_host_module(root, "dataset"), import_host_module(root, "utils.utils_distributed_sampler"))
    for name in ("losses", "partial_fc_v2", "lr_scheduler"):
        import_host_module(root, name)
    install(cfg)
    import_host_module(root, "utils.utils_config").get_config = lambda _path: cfg
    if int(os.environ.get("RANK", "0")) == 0:
        for line in notices:
            print(f"{PROG}: note: {line}", file=sys.stderr)
    sys.argv = [str(root / "train_v2.py"), args.config]
    runpy.run_path(str(root / "train_v2.py"), run_name="__main__")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except HostError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
