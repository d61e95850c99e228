"""A loadable copy of an ONNX model whose graph lists stale inputs; the user's file is never changed.

Older converters (mxnet's ONNX export, some quantisers: OpenCV Zoo's SFace
``face_recognition_sface_2021dec_int8bq.onnx`` is one) list every initializer
as a graph input too, and can leave graph inputs that no node reads. onnxruntime
then shows them as extra inputs to feed (or refuses the file), and OpenCV's new
DNN engine cannot tell which input is the image. :func:`loadable_model` writes a
copy without them, ``<cache>/<sha256 of the file>.onnx`` (written atomically,
reused while the file is unchanged), and returns its path; a graph with nothing
stale is used as it is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from fpr_plugin.atomic import atomic_write, clean_stale_temporaries
from fpr_plugin.eval.cache import file_sha256

__all__ = ["default_cache_dir", "stale_inputs", "prune_inputs", "loadable_model"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fpr_plugin/onnx`` (``~/.cache/fpr_plugin/onnx`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fpr_plugin" / "onnx"


def _subgraphs(graph: Any) -> Iterator[Any]:
    """The graphs held in node attributes (If/Loop/Scan bodies), recursively."""
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield sub
                yield from _subgraphs(sub)


def stale_inputs(model: Any) -> list[str]:
    """Names of the graph inputs that are initializers (IR version >= 4) or that no node (nor output) reads."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    read = {o.name for o in graph.output}
    for g in (graph, *_subgraphs(graph)):
        read.update(name for node in g.node for name in node.input)
    return [i.name for i in graph.input
            if (i.name in initializers and model.ir_version >= 4) or i.name not in read]


def prune_inputs(model: Any) -> list[str]:
    """Remove :func:`stale_inputs` from ``model``'s graph inputs in place; returns their names."""
    stale = set(stale_inputs(model))
    keep = [i for i in model.graph.input if i.name not in stale]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return sorted(stale)


def _uses_external_data(model: Any) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def loadable_model(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                   sha256: str | None = None) -> tuple[Path, list[str]]:
    """``(path, [])`` when the graph has no stale inputs, else ``(pruned copy, pruned input names)``.

    The copy is ``<cache_dir>/<sha256>.onnx`` (default :func:`default_cache_dir`); ``sha256`` of the
    file may be given when already known. A file that is not an ONNX protobuf is returned as it is
    (onnxruntime then says what is wrong with it).
    """
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX protobuf: let onnxruntime name the problem
        return path, []
    stale = prune_inputs(model)
    if not stale:
        return path, []
    if _uses_external_data(model):
        raise ValueError(f"{path}: its graph lists {len(stale)} stale inputs (initializers or unread names such as "
                         f"{stale[0]!r}) and its weights are in external data files; expected a single-file model "
                         "to copy without them (or remove them with onnx and pass that file)")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    copy = folder / f"{sha256 or file_sha256(path)}.onnx"
    if not copy.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(folder)
        data = model.SerializeToString()
        atomic_write(copy, lambda tmp: Path(tmp).write_bytes(data))
    return copy, stale
