"""Evaluation as a library: :func:`evaluate_models` embeds every test set with every model (embeddings cached by
model hash and image contents) and computes the pair-list and dense protocols; the result is a :class:`Report`.

Example::

    from fpr_plugin.eval import evaluate_models
    from fpr_plugin.eval.sets import load_rfw

    report = evaluate_models({"cifp": "cifp.onnx"}, [load_rfw("/data/RFW")], fprs=[1e-4, 1e-3],
                             cache_dir="eval_cache")
    report.write("eval_out")   # report.json, report.md, plots

With ``calibrations`` (files from ``fpr-calibrate`` or :class:`fpr_plugin.eval.calibration.Calibration` objects),
every model that a calibration was fitted for also gets an entry ``<label>+<method>``: the same sets and
protocols on the calibrated scores, thresholds found the same way (one global threshold per overall FPR).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fpr_plugin.cli_errors import UserError
from fpr_plugin.eval.cache import cached_embeddings, file_sha256
from fpr_plugin.eval.dense import DEFAULT_FPRS, count_tiles
from fpr_plugin.eval.evaluate import evaluate_dense, evaluate_pairs
from fpr_plugin.eval.metrics import check_fpr
from fpr_plugin.eval.sets.base import EvalSet, ImageSet
from fpr_plugin.face_input import INSIGHTFACE, InputConvention

__all__ = ["ModelResult", "Report", "SetResult", "build_embedder", "embed_set", "evaluate_models", "model_labels"]

PathLike = str | os.PathLike


@dataclass
class SetResult:
    """One model on one test set: the pair-list and dense protocols' numbers (None when not run) and the notes."""

    n_images: int
    embeddings_cached: bool
    notes: list[str]
    pairs: dict | None = None
    dense: dict | None = None


@dataclass
class ModelResult:
    """One model: its file, its SHA-256 and its result on every test set (by set name)."""

    model: str
    sha256: str
    input: dict = field(default_factory=dict)  # how it was fed: OnnxEmbedder.input_info()
    datasets: dict[str, SetResult] = field(default_factory=dict)


@dataclass
class Report:
    """Every model on every set, at the overall FPRs ``fprs``; ``write`` makes report.json, report.md and plots."""

    fprs: list[float]
    models: dict[str, ModelResult]
    bias_degree: str = "std_over_f"

    def to_dict(self) -> dict:
        """The nested dict :mod:`fpr_plugin.eval.report` writes (the layout of ``report.json``)."""
        return {"fprs": list(self.fprs), "bias_degree": self.bias_degree,
                "models": {label: asdict(result) for label, result in self.models.items()}}

    def write(self, folder: PathLike) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and the PNG plots into ``folder``; returns their paths by name.

        (``fpr-eval`` puts the whole folder in place at once: :class:`fpr_plugin.eval.output.ReportFolder`.)
        """
        from fpr_plugin.eval.report import write_report

        return write_report(self.to_dict(), folder)

    def markdown(self) -> str:
        """The Markdown tables of ``report.md`` (without the figure links)."""
        from fpr_plugin.eval.report import render_markdown, to_jsonable

        return render_markdown(to_jsonable(self.to_dict()))


def model_labels(paths: Sequence[PathLike]) -> dict[str, Path]:
    """A model's label is its file stem (``parent/stem`` when two stems collide)."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    labels = {}
    for path, stem in zip(paths, stems):
        label = stem if stems.count(stem) == 1 else f"{path.parent.name}/{stem}"
        if label in labels:
            raise ValueError(f"model {path} given twice")
        labels[label] = path
    return labels


def build_embedder(model_path: PathLike, providers: Sequence[str] | None, batch_size: int,
                   inputs: Mapping[str, Any] | None = None) -> Any:
    """The onnxruntime embedder of one model (:class:`fpr_plugin.eval.embed.OnnxEmbedder`); fails on a file that
    is not a loadable face-embedding ONNX model. ``inputs``: its keyword arguments ``input_mean``,
    ``input_std``, ``input_color`` and ``cache_dir``."""
    from fpr_plugin.eval.embed import OnnxEmbedder

    return OnnxEmbedder(str(model_path), providers=providers, batch_size=batch_size, **dict(inputs or {}))


def _convention_key(embedder: Any) -> str:
    """Cache-key suffix for a model fed with another convention than insightface's (none for the default)."""
    convention: InputConvention = getattr(embedder, "convention", INSIGHTFACE)
    if convention == INSIGHTFACE:
        return ""
    return "-input" + hashlib.sha256(repr((convention.mean, convention.std, convention.color)).encode()).hexdigest()[:8]


def embed_set(embedder: Any, images: ImageSet, batch_size: int, flip: bool, desc: str, progress: bool) -> np.ndarray:
    """Embeddings ``[N, D]`` (float32, not normalised) of every image of a set, in batches."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            idx = range(start, min(start + batch_size, len(images)))
            out.append(np.asarray(embedder.embed(images.load(idx), color="bgr", flip=flip), dtype=np.float32))
            bar.update(len(idx))
    return np.concatenate(out)


def _check_arguments(labels: Mapping[str, Path], sets: Sequence[EvalSet], fprs: Sequence[float],
                     batch_size: int, chunk_size: int) -> list[float]:
    if not labels:
        raise ValueError("models: expected at least one ONNX model")
    if not sets:
        raise ValueError("sets: expected at least one test set")
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"sets: the set name(s) {twice} occur twice; expected one name per set (rename them)")
    fprs = [check_fpr(f, "fprs") for f in fprs]
    if not fprs:
        raise ValueError("fprs: expected at least one overall FPR")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    for path in labels.values():
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    return fprs


@dataclass(frozen=True)
class _Options:
    """The settings :func:`evaluate_models` applies to every model and set."""

    fprs: list[float]
    flip: bool
    batch_size: int
    chunk_size: int
    dense: bool
    cache_dir: Path | None
    progress: bool


def _set_embeddings(label: str, model_path: Path, sha: str, embedder: Any, s: EvalSet,
                    opt: _Options) -> tuple[np.ndarray, bool]:
    """A set's embeddings with one model (from the cache when there) and whether they came from the cache."""
    def compute() -> np.ndarray:
        return embed_set(embedder, s.images, opt.batch_size, opt.flip, f"{label} {s.name}", opt.progress)

    if opt.cache_dir is None:
        emb, cached = compute(), False
    else:
        key = s.cache_key() + ("" if opt.flip else "-noflip") + _convention_key(embedder)
        emb, cached = cached_embeddings(opt.cache_dir, sha, key, compute, expected_rows=len(s.images))
    if not np.isfinite(emb).all():
        raise UserError(f"model {model_path} gives non-finite embeddings on {s.name}; expected finite "
                        "embeddings (is the model diverged?)")
    return emb, cached


def _evaluate_set(label: str, emb: np.ndarray, cached: bool, s: EvalSet, opt: _Options) -> SetResult:
    from tqdm import tqdm

    result = SetResult(n_images=len(s.images), embeddings_cached=cached, notes=list(s.notes))
    if s.pairs is not None:
        result.pairs = evaluate_pairs(emb, s.pairs, opt.fprs)
    if s.identities is not None and (opt.dense or s.pairs is None):
        with tqdm(total=count_tiles(s.image_groups, opt.chunk_size), desc=f"{label} {s.name} dense", unit="tile",
                  disable=not opt.progress, leave=False) as bar:
            result.dense = evaluate_dense(emb, s.identities, s.image_groups, opt.fprs, chunk_size=opt.chunk_size,
                                          progress=bar.update)
    return result


def evaluate_models(models: Mapping[str, PathLike] | Sequence[PathLike], sets: Sequence[EvalSet], *,
                    fprs: Sequence[float] = DEFAULT_FPRS, flip: bool = True, batch_size: int = 64,
                    chunk_size: int = 2048, dense: bool = True, cache_dir: PathLike | None = None,
                    providers: Sequence[str] | None = None, progress: bool = True,
                    input_mean: float | None = None, input_std: float | None = None,
                    input_color: str | None = None, calibrations: Sequence[Any] = ()) -> Report:
    """Every model on every set: accuracy, ROC and group FPRs at one global threshold per overall FPR.

    ``models``: ``{label: onnx path}``, or paths (labelled by file stem).
    ``sets``: loaded sets (:mod:`fpr_plugin.eval.sets`), each with a distinct name.
    ``flip``: embed ``emb(img) + emb(mirrored img)``. ``dense=False`` skips the
    dense protocol on sets that also have a pair list. ``chunk_size``: dense tile
    size. ``cache_dir``: reuse and keep embeddings there (None: no cache).
    ``providers``: onnxruntime providers (default CUDA when available, else CPU).
    ``input_mean``/``input_std``/``input_color`` ("rgb"/"bgr", the order the graph expects): every model's
    input convention; each one left None is read from the model's metadata, else insightface's
    127.5/127.5/RGB. A graph that lists stale inputs runs from a pruned copy in ``cache_dir/onnx``
    (default the user cache, :func:`fpr_plugin.eval.onnx_prune.default_cache_dir`).
    Every model is loaded, and so checked, before any set is embedded.
    ``calibrations``: calibration files or objects (:mod:`fpr_plugin.eval.calibration`), each fitted for one of
    the models (its SHA-256; else UserError naming both) on a set that shares no image with any test set (else
    UserError; shared identity names only give a note): entries ``<label>+<method>`` beside the raw ones.
    """
    labels = ({str(k): Path(v) for k, v in models.items()} if isinstance(models, Mapping)
              else model_labels(models))
    opt = _Options(_check_arguments(labels, sets, fprs, batch_size, chunk_size), flip, batch_size, chunk_size,
                   dense, Path(cache_dir) if cache_dir is not None else None, progress)
    inputs = {"input_mean": input_mean, "input_std": input_std, "input_color": input_color,
              "cache_dir": opt.cache_dir / "onnx" if opt.cache_dir is not None else None}
    embedders = {label: build_embedder(path, providers, batch_size, inputs) for label, path in labels.items()}
    shas = {label: file_sha256(path) for label, path in labels.items()}
    calibrated = _match_calibrations(calibrations, labels, shas, sets)
    results: dict[str, ModelResult] = {}
    with warnings.catch_warnings():
        # insightface's norm_crop calls a scikit-image method deprecated in 0.26, once per image
        warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")
        for label, path in labels.items():
            sha = shas[label]
            info = getattr(embedders[label], "input_info", None)
            result = ModelResult(model=str(path), sha256=sha, input=info() if info else {})
            extra = {name: ModelResult(model=str(path), sha256=sha, input={**result.input, "calibration": about})
                     for name, (_, about) in calibrated.get(label, {}).items()}
            for s in sets:
                emb, cached = _set_embeddings(label, path, sha, embedders[label], s, opt)
                result.datasets[s.name] = _evaluate_set(label, emb, cached, s, opt)
                for name, (calib, about) in calibrated.get(label, {}).items():
                    extra[name].datasets[s.name] = _evaluate_calibrated(name, calib, about, emb, cached, s, opt)
            results[label] = result
            results.update(extra)
    return Report(fprs=opt.fprs, models=results)


def _match_calibrations(calibrations: Sequence[Any], labels: Mapping[str, Path], shas: Mapping[str, str],
                        sets: Sequence[EvalSet]) -> dict[str, dict[str, tuple[Any, dict]]]:
    """``{model label: {entry label: (calibration, its description)}}``; refuses a calibration fitted for none of
    the models and one whose fit set shares images with a test set."""
    from fpr_plugin.eval.calibration import Calibration, load_calibration
    from fpr_plugin.eval.calibration.fitdata import image_digests

    out: dict[str, dict[str, tuple[Any, dict]]] = {}
    test_images = {s.name: set(image_digests(s)) for s in sets} if calibrations else {}
    for item in calibrations:
        calib = item if isinstance(item, Calibration) else load_calibration(item)
        source = "calibration object" if isinstance(item, Calibration) else str(item)
        owners = [label for label, sha in shas.items() if sha == calib.model_sha256]
        if not owners:
            given = ", ".join(f"{labels[label]} (sha256 {sha})" for label, sha in shas.items())
            raise UserError(f"calibration {source} was fitted for model sha256 {calib.model_sha256 or '(none)'}; "
                            f"the models given are {given}; expected a calibration made with fpr-calibrate for one "
                            "of them")
        fit_images = set(calib.fit_images)
        for s in sets:
            shared = fit_images & test_images[s.name]
            if shared:
                raise UserError(f"calibration {source} was fitted on set {calib.fit_set!r}, which shares "
                                f"{len(shared)} image(s) with test set {s.name!r}; expected a calibration set whose "
                                "identities are disjoint from the test set's")
        about = {"method": calib.method, "source": source, "fit_set": calib.fit_set, "params": dict(calib.params)}
        for label in owners:
            entries = out.setdefault(label, {})
            name = f"{label}+{calib.method}"
            if name in entries:  # a second calibration of one method for one model
                name = f"{name}-{len(entries) + 1}"
            entries[name] = (calib, about)
    return out


def _evaluate_calibrated(name: str, calib: Any, about: dict, emb: np.ndarray, cached: bool, s: EvalSet,
                         opt: _Options) -> SetResult:
    """One calibrated entry on one set: the set's protocols on the calibration's scores."""
    from tqdm import tqdm

    from fpr_plugin.eval.calibration.fitdata import identity_digests, image_groups
    from fpr_plugin.eval.calibration.protocols import calibrated_dense, pair_list_scores
    from fpr_plugin.eval.evaluate import dense_report, pairs_report

    notes = list(s.notes) + [f"{name}: scores calibrated with {calib.method} fitted on {calib.fit_set!r} "
                             f"({about['source']}); one global threshold on the calibrated scores"]
    shared = set(calib.fit_identities) & set(identity_digests(s))
    if shared:
        notes.append(f"{name}: the calibration set {calib.fit_set!r} shares {len(shared)} identity name(s) with "
                     f"{s.name}; its figures may be optimistic (expected disjoint identities)")
    if "flip" in calib.embedding and bool(calib.embedding["flip"]) != opt.flip:
        notes.append(f"{name}: the calibration was fitted on embeddings with flip={calib.embedding['flip']}, "
                     f"this evaluation uses flip={opt.flip}")
    result = SetResult(n_images=len(s.images), embeddings_cached=cached, notes=notes)
    groups = image_groups(s) if calib.needs_groups else None
    if calib.needs_groups and groups is None:
        raise UserError(f"{name}: the {calib.method} calibration needs a group per image, which set {s.name} "
                        "does not give")
    if s.pairs is not None:
        result.pairs = pairs_report(pair_list_scores(emb, s.pairs, calib, groups), s.pairs, opt.fprs)
    if s.identities is not None and (opt.dense or s.pairs is None):
        with tqdm(total=count_tiles(s.image_groups, opt.chunk_size), desc=f"{name} {s.name} dense", unit="tile",
                  disable=not opt.progress, leave=False) as bar:
            dense = calibrated_dense(emb, s.identities, s.image_groups, calib, opt.fprs, opt.chunk_size, bar.update)
        result.dense = dense_report(dense, emb.shape[0])
    return result
