"""Export a trained backbone to an ONNX model that insightface loads as recognition.

The graph takes ``data`` ``[N, 3, 112, 112]`` float RGB already normalised as
``(pixel - 127.5) / 127.5`` (insightface's convention for graphs without
Sub/Mul input nodes) and returns one embedding ``[N, D]`` (not L2-normalised).
Before the file appears under its final name the export checks itself:
onnxruntime against torch on random and real images, and insightface's
``model_zoo.get_model`` must route it to ``ArcFaceONNX`` with mean/std 127.5 and
give the torch embedding for an aligned BGR face.

Besides fpr-train's ``model.pt`` (with ``config.json`` beside it) and full
checkpoints, a bare arcface_torch ``backbone.pth`` exports: its network and
embedding size are read off its keys, or given with ``--network`` and
``--embedding-size`` (which must then agree with the keys).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import secrets
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fpr_plugin.backbones.iresnet import IRESNET_LAYERS
from fpr_plugin.backbones.state_dicts import (
    StateDictMismatch,
    check_state_dict,
    infer_iresnet,
    normalize_state_dict,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "INPUT_MEAN",
    "INPUT_STD",
    "ExportCheckError",
    "load_checkpoint",
    "build_model",
    "check_state_dict",
    "export_onnx",
    "verify_onnx",
    "main",
]

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
INPUT_MEAN = 127.5
INPUT_STD = 127.5
IMAGE_SIZE = 112
DEFAULT_TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    """The exported graph disagrees with torch or is not loadable by insightface."""


# --------------------------------------------------------------------------- loading


def _torch_load(path: Path, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` on CPU, with ``weights_only=True`` unless the file is trusted."""
    if trust_checkpoint:  # full unpickling: only for files from a trusted source
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        reason = _load_failure(exc)
        hint = ""
        if "easydict" in reason.lower():
            hint = (" The checkpoint stores an EasyDict config: pass --trust-checkpoint "
                    "(trust_checkpoint=True) if you trust the file, or export model.pt with config.json.")
        raise ValueError(
            f"{path} is not a model checkpoint: expected a backbone state_dict (model.pt) or a "
            f"checkpoint dict with 'backbone' and 'config', saved with torch.save "
            f"(torch.load(weights_only=True): {reason}).{hint}"
        ) from exc


def _load_failure(exc: BaseException) -> str:
    """The informative part of a ``torch.load`` error."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|\. Please|$)", text, re.S)
    if match:
        reason = match.group(1).strip()
        if "torch.nn.modules" in reason:
            reason += " (a pickled nn.Module; save model.state_dict() instead)"
        return reason
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _load_recipe(recipe: str | os.PathLike) -> dict:
    """A config from a recipe file (via fpr_plugin.train.config) or a resolved config.json."""
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist")
    if path.suffix == ".json":
        return _load_json(path)
    try:
        from fpr_plugin.train.config import load_config
    except ImportError as exc:
        raise RuntimeError(
            f"--recipe {path} needs fpr_plugin.train.config.load_config, which is not "
            f"available ({exc}); pass the training output's config.json instead"
        ) from exc
    try:
        cfg = dict(load_config(str(path)))
    except (KeyError, TypeError, ValueError, SyntaxError, ImportError) as exc:
        raise ValueError(f"recipe {path} could not be loaded: {exc}") from exc
    cfg.setdefault("recipe", path.stem)
    return cfg


def load_checkpoint(
    checkpoint_path: str | os.PathLike,
    recipe: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    network: str | None = None,
    embedding_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(backbone state_dict, config)`` from ``model.pt``, a full checkpoint or a ``backbone.pth``.

    The config comes from ``recipe`` when given (a recipe ``.py`` or a ``config.json``),
    else from the checkpoint's ``config`` entry, else from ``config.json`` beside it,
    else (a bare state dict such as arcface_torch's ``backbone.pth``) from the keys.
    ``network`` and ``embedding_size`` override the config; given explicitly, they
    must agree with the keys (ValueError naming both). The state dict comes back
    with arcface_torch's key names and no ``module.`` prefix.
    ``trust_checkpoint`` allows arbitrary pickled objects (``weights_only=False``).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    obj = _torch_load(path, trust_checkpoint)
    config: Any = None
    if isinstance(obj, Mapping) and "backbone" in obj:
        state_dict = obj["backbone"]
        config = obj.get("config")
        if not _is_state_dict(state_dict):
            raise ValueError(
                f"{path}: entry 'backbone' is not a state_dict of tensors "
                f"(got {type(state_dict).__name__})"
            )
    elif _is_state_dict(obj):
        state_dict = obj
    else:
        found = f"keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{path} is not a model checkpoint: expected a backbone state_dict or a dict with "
            f"a 'backbone' state_dict, found {found}"
        )
    state_dict = normalize_state_dict(state_dict)
    from_keys = False
    if recipe is not None:
        config = _load_recipe(recipe)
    elif config is None:
        beside = path.parent / "config.json"
        if beside.is_file():
            config = _load_json(beside)
        else:  # a bare state dict (arcface_torch's backbone.pth): the keys say what it is
            config, from_keys = {}, True
    config = dict(config)
    if network is not None:
        config["network"] = str(network)
    if embedding_size is not None:
        config["embedding_size"] = int(embedding_size)
    _fill_from_keys(config, state_dict, path, from_keys, network, embedding_size)
    for key in ("network", "embedding_size"):
        if config.get(key) is None:
            raise ValueError(f"config for {path} has no {key!r}")
    return state_dict, config


def _fill_from_keys(
    config: dict, state_dict: Mapping[str, torch.Tensor], path: Path, from_keys: bool,
    network: str | None, embedding_size: int | None,
) -> None:
    """Fill ``network``/``embedding_size``/``backbone_params`` from the keys and check explicit ones."""
    needed = config.get("network") is None or config.get("embedding_size") is None
    explicit = network is not None or embedding_size is not None
    known = config.get("network")
    if not (needed or from_keys or explicit) or (known is not None and known not in IRESNET_LAYERS):
        return  # nothing to fill or check, or not an IResNet: build_model checks the keys
    try:
        spec = infer_iresnet(state_dict, str(path))
    except StateDictMismatch as exc:
        raise ValueError(str(exc)) from None
    if config.get("network") is None:
        config["network"] = spec.network
    elif config["network"] != spec.network:
        given = f"--network {network}" if network is not None else f"config network {config['network']!r}"
        raise ValueError(
            f"{given} does not fit {path}: its keys are an IResNet {spec.network} "
            f"(blocks per stage {spec.layers}, {config['network']} has {IRESNET_LAYERS[config['network']]})"
        )
    if config.get("embedding_size") is None:
        config["embedding_size"] = spec.embedding_size
    elif embedding_size is not None and int(embedding_size) != spec.embedding_size:
        raise ValueError(
            f"--embedding-size {embedding_size} does not fit {path}: its fc/features give "
            f"embedding size {spec.embedding_size}"
        )
    if from_keys or config.get("backbone_params") is None:
        config["backbone_params"] = {**spec.backbone_params(), **dict(config.get("backbone_params") or {})}


def build_model(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> nn.Module:
    """The backbone described by ``config`` with ``state_dict`` loaded, in eval mode, fp32."""
    from fpr_plugin.backbones import backbone_from_config

    cfg = dict(config)
    params = dict(cfg.get("backbone_params") or {})
    params.pop("fp16", None)  # export runs in float32
    cfg["backbone_params"] = params
    model = backbone_from_config(cfg)
    try:
        check_state_dict(model, state_dict)
    except ValueError as exc:
        raise ValueError(f"{exc} (network {cfg['network']!r}, params {params})") from None
    model.load_state_dict(state_dict)
    return model.float().eval()


# --------------------------------------------------------------------------- checks


def _bundled_photos() -> list[np.ndarray]:
    """insightface's sample photos (BGR), or an empty list when unavailable."""
    import cv2

    try:
        folder = resources.files("insightface") / "data" / "images"
    except ModuleNotFoundError:
        return []
    photos = []
    for name in ("t1.jpg", "Tom_Hanks_54745.png"):
        entry = folder / name
        if entry.is_file():
            img = cv2.imdecode(np.frombuffer(entry.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            if img is not None:
                photos.append(img)
    return photos


def sample_images(count: int = 4, seed: int = 0) -> np.ndarray:
    """``count`` 112x112 BGR uint8 crops of insightface's bundled photos (real pixels)."""
    import cv2

    photos = _bundled_photos()
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        if photos:
            img = photos[i % len(photos)]
            h, w = img.shape[:2]
            side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(cv2.resize(img[y:y + side, x:x + side], (IMAGE_SIZE, IMAGE_SIZE)))
        else:  # smooth colour gradients when the photos are unavailable
            yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
            phase = rng.uniform(0, 2 * np.pi, 3)
            crops.append(np.stack([127.5 + 127 * np.sin(6 * xx + 4 * yy + p) for p in phase], -1))
    return np.clip(np.stack(crops), 0, 255).astype(np.uint8)


def bgr_to_blob(images_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 ``[N, H, W, 3]`` -> normalised RGB float32 ``[N, 3, H, W]``."""
    rgb = images_bgr[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - INPUT_MEAN) / INPUT_STD).transpose(0, 3, 1, 2))


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs difference, scale-relative difference and minimum row cosine."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    max_abs = float(np.max(np.abs(reference - candidate)))
    scale = float(np.max(np.abs(reference))) or 1.0
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-30)
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale, "min_cosine": float(cosine.min())}


def _torch_embed(model: nn.Module, blob: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(blob)).numpy()


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    batch: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Check an exported graph against ``model``; raise ExportCheckError on disagreement.

    ``batch`` is the fixed batch of the graph (None when dynamic). Checks: onnxruntime
    vs torch on random and real inputs; insightface routes the file to ArcFaceONNX
    with mean/std 127.5 and its ``get_feat`` of an aligned BGR face equals torch.
    """
    import onnxruntime as ort
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    onnx_path = str(onnx_path)
    n = batch or 4
    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    report: dict[str, Any] = {}
    real = sample_images(n, seed)
    inputs = {
        "random": rng.uniform(-1.0, 1.0, size=(n, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32),
        "real": bgr_to_blob(real),
    }
    for name, blob in inputs.items():
        (ort_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: blob})
        stats = compare(_torch_embed(model, blob), ort_out)
        report[name] = stats
        if stats["max_rel_diff"] > tolerance:
            raise ExportCheckError(
                f"onnxruntime and torch disagree on {name} inputs: max abs diff "
                f"{stats['max_abs_diff']:.3g} ({stats['max_rel_diff']:.3g} of the output scale, "
                f"tolerance {tolerance:g}), min cosine {stats['min_cosine']:.8f}"
            )

    recognition = get_model(onnx_path, providers=["CPUExecutionProvider"])
    if not isinstance(recognition, ArcFaceONNX):
        raise ExportCheckError(
            f"insightface.model_zoo.get_model did not route {onnx_path} to ArcFaceONNX "
            f"(got {type(recognition).__name__})"
        )
    if (recognition.input_mean, recognition.input_std) != (INPUT_MEAN, INPUT_STD):
        raise ExportCheckError(
            f"insightface infers input mean/std {recognition.input_mean}/{recognition.input_std}, "
            f"expected {INPUT_MEAN}/{INPUT_STD} (the graph must not start with Sub and Mul nodes)"
        )
    # aligned 112x112 BGR faces, as insightface's FaceAnalysis passes them
    insight = np.asarray(recognition.get_feat(list(real))).reshape(n, -1)
    stats = compare(_torch_embed(model, bgr_to_blob(real)), insight)
    report["insightface"] = {
        "class": type(recognition).__name__,
        "taskname": recognition.taskname,
        "input_mean": recognition.input_mean,
        "input_std": recognition.input_std,
        "input_size": list(recognition.input_size),
        **stats,
    }
    if stats["max_rel_diff"] > tolerance:
        raise ExportCheckError(
            f"insightface ArcFaceONNX.get_feat disagrees with torch on aligned BGR faces: "
            f"max abs diff {stats['max_abs_diff']:.3g}, min cosine {stats['min_cosine']:.8f}"
        )
    return report


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
        "input_color": "RGB",
        "input_mean": str(INPUT_MEAN),
        "input_std": str(INPUT_STD),
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
        f"  input {report['input']['name']} {report['input']['shape']} RGB (x-127.5)/127.5, "
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
