"""``fpr-train RECIPE [--loss NAME] [--set key=value ...] [--resume]`` (also ``python -m fpr_plugin.train``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from fpr_plugin.cli_errors import add_debug_flag, run_cli

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of fpr-train."""
    from fpr_plugin.train.schema import keys_help

    parser = argparse.ArgumentParser(
        prog="fpr-train",
        description=(
            "Train a face-recognition backbone with a margin loss from the registry "
            "(cosface, arcface, fpr_penalty, ...). One process, or every process of "
            "`torchrun --nproc_per_node=N -m fpr_plugin.train ...`. A recipe is Python "
            "and runs as code (as arcface_torch's configs do): run only recipes you trust."
        ),
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="recipe file (e.g. recipes/bupt_balancedface_r34.py) or the name of a "
                        "shipped recipe (e.g. synthetic_demo)")
    parser.add_argument("--loss", help="loss name from the registry; overrides the recipe's `loss`")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable), e.g. --set lr=0.05 --set loss_params.alpha=0.5",
    )
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last intact checkpoint (a damaged newest one is skipped)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace another run's checkpoints and files in the output folder")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and build the model, without training",
    )
    return add_debug_flag(parser)


def _dry_run(cfg) -> int:
    from fpr_plugin.train.trainer import build_model

    if cfg.num_classes is None:
        from fpr_plugin.train.config import fill_from_records

        fill_from_records(cfg)
    backbone, head, _ = build_model(cfg)
    params = sum(p.numel() for p in backbone.parameters())
    if cfg.get("init_backbone"):  # check that the pretrained weights fit (a fresh run loads them)
        from fpr_plugin.backbones.pretrained import InitBackboneError, load_init_backbone
        from fpr_plugin.cli_errors import UserError

        try:
            load_init_backbone(backbone, cfg.init_backbone, cfg)
        except InitBackboneError as exc:
            raise UserError(str(exc)) from None
    print(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    print(f"backbone {cfg.network}: {params / 1e6:.2f}M parameters; classifier {tuple(head.weight.shape)}")
    if cfg.get("init_backbone"):
        print(f"init_backbone {cfg.init_backbone}: fits the recipe's {cfg.network}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fpr-train``; returns the exit status.

    2: bad input (one line naming the file/key/value); 1: the run diverged (one
    line naming the step and the last good checkpoint) or an internal error.
    """
    return run_cli("fpr-train", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from fpr_plugin.train.config import load_config

    if args.resume and args.overwrite:
        build_parser().error("--resume and --overwrite exclude each other")
    overrides = list(args.overrides) + (["resume=True"] if args.resume else [])
    cfg = load_config(args.recipe, loss=args.loss, overrides=overrides)
    if args.dry_run:
        return _dry_run(cfg)
    from fpr_plugin.backbones.pretrained import InitBackboneError
    from fpr_plugin.cli_errors import UserError
    from fpr_plugin.train.trainer import train

    try:
        train(cfg, overwrite=args.overwrite)
    except InitBackboneError as exc:  # the recipe's init_backbone does not fit: bad input
        raise UserError(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
