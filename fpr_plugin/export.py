"""Export a trained backbone to an ONNX model that insightface loads as recognition.

The graph takes ``data`` ``[N, 3, 112, 112]`` float RGB already normalised as
``(pixel - 127.5) / 127.5`` (insightface's convention for graphs without
Sub/Mul input nodes, :mod:`fpr_plugin.face_input`) and returns one embedding
``[N, D]`` (not L2-normalised).
The model is read with :mod:`fpr_plugin.model_file` (``model.pt`` with
``config.json`` beside it, a full checkpoint, or a bare arcface_torch
``backbone.pth``). Before the file appears under its final name it passes the
self-checks of :mod:`fpr_plugin.export_checks` (onnxruntime vs torch, and
insightface's loader).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fpr_plugin.export_checks import DEFAULT_TOLERANCE, ExportCheckError, verify_onnx
from fpr_plugin.face_input import IMAGE_SIZE, INPUT_MEAN, INPUT_NAME, INPUT_STD, INSIGHTFACE, OUTPUT_NAME
from fpr_plugin.model_file import build_model, check_state_dict, load_checkpoint

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "INPUT_MEAN",
    "INPUT_STD",
    "ExportCheckError",
    "load_checkpoint",
    "build_model",
    "check_state_dict",
    "export_model",
    "export_onnx",
    "verify_onnx",
    "main",
]


# --------------------------------------------------------------------------- export


def _metadata(config: Mapping[str, Any], recipe: str | os.PathLike | None) -> dict[str, str]:
    from fpr_plugin import __version__

    recipe_name = config.get("recipe") or (Path(recipe).stem if recipe else "")
    return {
        "embedding_size": str(int(config["embedding_size"])),
        "network": str(config["network"]),
        "backbone_params": json.dumps(dict(config.get("backbone_params") or {}), sort_keys=True),
        "loss": str(config.get("loss") or ""),
        "loss_params": json.dumps(dict(config.get("loss_params") or {}), sort_keys=True, default=str),
        "recipe": str(recipe_name),
        "input_name": INPUT_NAME,
        **INSIGHTFACE.metadata(),  # input_mean, input_std, input_color: read back by fpr_plugin.eval.embed
        "producer": f"fpr_plugin {__version__}",
    }


def _parse_batch(batch: str | int) -> int | None:
    if batch in ("dynamic", None):
        return None
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def export_model(
    model: nn.Module, path: str | os.PathLike, opset: int = 17, batch: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``model`` (eval mode) as ONNX to ``path`` with the TorchScript exporter."""
    import onnx

    model = model.eval()
    dummy = torch.zeros(batch or 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    dynamic_axes = None if batch else {INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}
    with warnings.catch_warnings():
        # torch >= 2.9 marks the TorchScript exporter as deprecated; the dynamo
        # exporter needs onnxscript, which is not a dependency.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(
    checkpoint_path: str | os.PathLike,
    output_path: str | os.PathLike,
    recipe: str | os.PathLike | None = None,
    opset: int = 17,
    batch: str | int = "dynamic",
    tolerance: float = DEFAULT_TOLERANCE,
    trust_checkpoint: bool = False,
    network: str | None = None,
    embedding_size: int | None = None,
) -> dict[str, Any]:
    """Export a checkpoint to ONNX, verify it, then move it to ``output_path``.

    ``network``/``embedding_size`` override or fill the config (see :func:`load_checkpoint`).
    Returns a report with the metadata, the graph's input/output and the check figures.
    """
    output = Path(output_path)
    if output.suffix != ".onnx":
        raise ValueError(f"output {str(output)!r} must end with .onnx (insightface looks for *.onnx)")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist")
    fixed_batch = _parse_batch(batch)
    state_dict, config = load_checkpoint(checkpoint_path, recipe, trust_checkpoint, network, embedding_size)
    model = build_model(state_dict, config)
    metadata = _metadata(config, recipe)

    # A hidden temporary name ending in .onnx: insightface only opens *.onnx paths as
    # files, and FaceAnalysis's *.onnx glob skips dot files.
    from fpr_plugin.atomic import clean_stale_temporaries

    for left in clean_stale_temporaries(output.parent, only_for=output.stem):
        print(f"fpr-export: note: removed {left}, left by an interrupted export", file=sys.stderr)
    tmp_name = output.parent / f".{output.stem}.{os.getpid()}.{secrets.token_hex(4)}.partial.onnx"
    try:
        export_model(model, tmp_name, opset=opset, batch=fixed_batch, metadata=metadata)
        checks = verify_onnx(tmp_name, model, batch=fixed_batch, tolerance=tolerance)
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return {
        "output": str(output),
        "checkpoint": str(checkpoint_path),
        "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": [fixed_batch or "N", 3, IMAGE_SIZE, IMAGE_SIZE]},
        "output_name": OUTPUT_NAME,
        "metadata": metadata,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "size_bytes": output.stat().st_size,
        "checks": checks,
    }


def _format_report(report: Mapping[str, Any]) -> str:
    meta = report["metadata"]
    lines = [
        f"exported {report['checkpoint']} -> {report['output']} "
        f"({report['size_bytes'] / 1e6:.1f} MB, opset {report['opset']}, {report['exporter']})",
        f"  network {meta['network']} {meta['backbone_params']}, embedding {meta['embedding_size']}, "
        f"loss {meta['loss'] or '-'}, recipe {meta['recipe'] or '-'}",
        f"  input {report['input']['name']} {report['input']['shape']} {INSIGHTFACE.describe()}, "
        f"output {report['output_name']}",
    ]
    for name in ("random", "real", "insightface"):
        s = report["checks"][name]
        lines.append(
            f"  check {name:<11} max abs diff {s['max_abs_diff']:.3e}  rel {s['max_rel_diff']:.3e}  "
            f"min cosine {s['min_cosine']:.8f}"
        )
    ins = report["checks"]["insightface"]
    lines.append(
        f"  insightface.model_zoo.get_model -> {ins['class']} ({ins['taskname']}), "
        f"input mean/std {ins['input_mean']}/{ins['input_std']}, size {ins['input_size']}"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``fpr-export`` / ``export/to_onnx.py``."""
    parser = argparse.ArgumentParser(
        prog="fpr-export",
        description="Export a trained backbone (model.pt or a full checkpoint) to an "
        "insightface-compatible ONNX recognition model, with self-checks.",
    )
    parser.add_argument(
        "checkpoint",
        help="model.pt (config.json beside it), a full checkpoint, or an arcface_torch backbone.pth",
    )
    parser.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    parser.add_argument("--recipe", help="recipe .py or config.json (default: the checkpoint's config)")
    parser.add_argument("--network", help="backbone name, e.g. r50 (default: the config's, else read off the keys)")
    parser.add_argument("--embedding-size", type=int,
                        help="embedding size (default: the config's, else read off the keys)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max |onnx - torch| relative to the output scale (default 1e-4)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle arbitrary objects in the checkpoint (only for trusted files)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    from fpr_plugin.cli_errors import add_debug_flag

    return add_debug_flag(parser)


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2: bad input, 1: a failed self-check)."""
    from fpr_plugin.cli_errors import run_cli

    return run_cli("fpr-export", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from fpr_plugin.cli_errors import UserError

    class ExportFailed(UserError):  # the export ran and failed its self-checks: one line, exit 1
        exit_code = 1

    args = build_parser().parse_args(argv)
    try:
        report = export_onnx(args.checkpoint, args.output, recipe=args.recipe, opset=args.opset,
                             batch=args.batch, tolerance=args.tolerance,
                             trust_checkpoint=args.trust_checkpoint, network=args.network,
                             embedding_size=args.embedding_size)
    except KeyError as exc:  # a key the checkpoint lacks: the user's input
        raise UserError(_one_line(exc)) from None
    except (ExportCheckError, RuntimeError) as exc:  # the export failed its self-checks
        raise ExportFailed(_one_line(exc)) from None
    print(json.dumps(report, indent=2) if args.json else _format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
