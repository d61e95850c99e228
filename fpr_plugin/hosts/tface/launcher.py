"""``python -m fpr_plugin.hosts.tface --root PATH/TFace/recognition --config train.yaml``.

Runs TFace's own, unchanged training script with ``HEAD_NAME: FprPenalty`` /
``FprPenaltyTface`` resolving to fpr_plugin's heads:

1. checks the checkout (master or v0.1.0) and the yaml (head name, the
   ``FPR_PENALTY`` loss parameters, index files);
2. prepares TFace's imports: ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``
   for its protobuf-3 generated ``example_pb2.py`` when protobuf >= 4 is
   installed; on master, a dareblopy stand-in when dareblopy is missing and
   the data are image lists (a TFRecord dataset without dareblopy is an error);
3. puts the root on ``sys.path``, installs our heads into ``get_head``;
4. loads TFace's script (master ``train.py``; v0.1.0 ``tasks/distfc`` or
   ``tasks/localfc`` by ``DIST_FC``, or ``--task``), points its ``TrainTask``
   at ``--config`` and calls its ``main()``.

TFace's training needs a CUDA GPU (``torch.cuda.set_device``, ``.cuda()``
throughout); ``--dry-run`` does steps 1-4 up to building TFace's
``TrainTask`` from the config, on any machine. Launch several GPUs with
``torchrun --nproc_per_node=N -m fpr_plugin.hosts.tface ...``; a plain
``python -m`` run is given a one-process ``env://`` rendezvous.
User errors print one line and exit 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

from fpr_plugin.hosts.tface import dareblopy_standin
from fpr_plugin.hosts.tface.checkout import MASTER, Checkout, CheckoutError, detect_checkout
from fpr_plugin.hosts.tface.common import build_head_loss, resolve_scale_margin
from fpr_plugin.hosts.tface.config import MASTER_BRANCH_MARGIN, MASTER_BRANCH_SCALE, ConfigError, TfaceConfig, read_config
from fpr_plugin.hosts.tface.task import EntryError, configure_task, load_entry

__all__ = ["UsageError", "build_parser", "main", "prepare_imports"]

PROG = "python -m fpr_plugin.hosts.tface"


class UsageError(ValueError):
    """A bad argument or an environment TFace cannot train in; one line."""


def build_parser() -> argparse.ArgumentParser:
    """The launcher's command-line parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run TFace's own training script with fpr_plugin's FprPenalty / FprPenaltyTface heads.",
    )
    parser.add_argument("--root", required=True, help="TFace's recognition folder (master) or the v0.1.0 tree")
    parser.add_argument("--config", required=True, help="the TFace yaml (HEAD_NAME: FprPenalty, optional FPR_PENALTY: {...})")
    parser.add_argument("--task", help="TFace training script to run, relative to --root (default: master train.py; "
                                       "v0.1.0 tasks/distfc/train_distfc.py or tasks/localfc/train_localfc.py by DIST_FC)")
    parser.add_argument("--dry-run", action="store_true", help="check everything and build TFace's TrainTask, train nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by torch.distributed.launch; TFace reads LOCAL_RANK
    return parser


def _entry(task: str | None, checkout: Checkout, cfg: TfaceConfig) -> Path:
    if task is not None:
        script = Path(task) if os.path.isabs(task) else checkout.root / task
        if not script.is_file():
            raise UsageError(f"--task {task}: no such script under {checkout.root}")
        return script
    if cfg.dist_fc is None:
        raise ConfigError(
            f"{cfg.path}: DIST_FC is missing: TFace v0.1.0 runs tasks/distfc (DIST_FC: true) or tasks/localfc "
            "(DIST_FC: false, the Cifp set-up); set it, or pass --task"
        )
    return checkout.entry(cfg.dist_fc)


def prepare_imports(cfg: TfaceConfig) -> list[str]:
    """Make TFace's top-level imports work without changing what TFace computes; returns notes to print."""
    notes = []
    if "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION" not in os.environ and "google.protobuf" not in sys.modules:
        try:
            major = int(metadata.version("protobuf").split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            major = 0
        if major >= 4:  # TFace's example_pb2.py is protobuf-3 generated code
            os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    if cfg.needs_dareblopy and not dareblopy_standin.available():
        raise ConfigError(
            f"{cfg.path}: DATASETS[0].name {cfg.dataset_names[0]!r} contains 'TFR', so TFace master reads TFRecords "
            "with dareblopy, which is not installed (pip install dareblopy)"
        )
    if dareblopy_standin.install():
        notes.append("dareblopy is not installed; the data are image lists, which need none of it: using a stand-in")
    return notes


def _one_process_rendezvous(cfg: TfaceConfig, local_rank: int | None) -> None:
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if cfg.data.get("DIST_URL", "env://") != "env://" or "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _install(cfg: TfaceConfig, checkout: Checkout):
    from fpr_plugin.hosts.tface.factory import install

    try:
        return install(cfg.loss_params, root=checkout.root)
    except ImportError as exc:
        raise UsageError(str(exc)) from None


def _check_head(get_head, cfg: TfaceConfig, entry: Path) -> type:
    dist_fc = cfg.dist_fc if cfg.dist_fc is not None else "localfc" not in entry.parts
    try:
        return get_head(cfg.head_name, dist_fc)
    except KeyError as exc:
        raise ConfigError(f"{cfg.path}: HEAD_NAME: {exc.args[0] if exc.args else exc}") from None


def _describe(cfg: TfaceConfig, checkout: Checkout, entry: Path, head: type) -> list[str]:
    lines = [f"TFace {checkout.version} at {checkout.root}; entry {entry.relative_to(checkout.root) if checkout.root in entry.parents else entry}",
             f"HEAD_NAME {cfg.head_name} -> {head.__module__}.{head.__qualname__}"]
    if cfg.ours:
        for i, entry_cfg in enumerate(cfg.data["DATASETS"]):
            if checkout.version == MASTER:
                scale, margin = entry_cfg.get("scale", MASTER_BRANCH_SCALE), entry_cfg.get("margin", MASTER_BRANCH_MARGIN)
            else:
                scale = margin = None
            scale, margin, rest = resolve_scale_margin(cfg.head_name, scale, margin, cfg.loss_params)
            layout = "class-sharded over the ranks" if "distfc" in head.__module__ else "data-parallel over the ranks"
            lines.append(f"  DATASETS[{i}] {entry_cfg['name']}: {build_head_loss(cfg.head_name, scale, margin, rest)!r}, {layout}")
    return lines


def _run(args: argparse.Namespace) -> int:
    checkout = detect_checkout(args.root)
    cfg = read_config(args.config, checkout)
    entry = _entry(args.task, checkout, cfg)
    notes = cfg.notes + prepare_imports(cfg)
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    get_head = _install(cfg, checkout)
    head = _check_head(get_head, cfg, entry)
    module = load_entry(entry)
    task = configure_task(module, cfg.path)
    if args.dry_run:
        task()  # TFace's own parse of the config
        for line in _describe(cfg, checkout, entry, head):
            print(line)
        print("TFace's TrainTask accepted the config (dry run: nothing trained)")
        return 0
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "TFace's training needs a CUDA GPU (BaseTask.init_env calls torch.cuda.set_device; the model and "
            "batches are moved with .cuda()), and none is visible; --dry-run checks the config on CPU"
        )
    _one_process_rendezvous(cfg, args.local_rank)
    model_root = cfg.data.get("MODEL_ROOT")
    if isinstance(model_root, str) and model_root:
        os.makedirs(model_root, exist_ok=True)  # TFace saves checkpoints there without creating it
    sys.argv = [str(entry)]
    module.main()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a user error, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (CheckoutError, ConfigError, EntryError, UsageError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
