"""Evaluation report: ``report.json`` (every number), ``report.md`` (the paper's tables), PNG plots.

The input is the nested dict of :meth:`fpr_plugin.eval.runner.Report.to_dict`::

    {"fprs": [...], "bias_degree": "std_over_f",
     "models": {label: {"model": path, "sha256": hex, "input": {"convention": ..., ...},
                        "datasets": {name: {"pairs": {...} | None, "dense": {...} | None, ...}}}}}

Several models side by side (``--compare``) share every table (one row per
model) and every figure (one panel per model).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpr_plugin.atomic import atomic_write

SUMMARY_LABELS = {"std_over_f": "std_g(FPR_g)/f", "max_min_ratio": "max/min FPR", "gini": "Gini FP differential"}


# --------------------------------------------------------------------------- writing helpers
def to_jsonable(obj: Any) -> Any:
    """Plain-JSON copy: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _write_text(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- Markdown
def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100.0 * x:.{digits}f}"


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.3f}"


def _fmt_f(f: float) -> str:
    return f"{f:.0e}".replace("e-0", "e-")


def _accuracy_table(models: dict, dataset: str) -> list[str]:
    rows = [(label, m["datasets"][dataset]["pairs"]["accuracy"]) for label, m in models.items()
            if m["datasets"].get(dataset, {}).get("pairs")]
    if not rows:
        return []
    groups = list(rows[0][1]["groups"])
    lines = ["Accuracy (%), 10-fold (threshold chosen on the other folds), per group; Std is ddof=1.", "",
             "| model | " + " | ".join(groups) + " | Avg | Std |", "|---" * (len(groups) + 3) + "|"]
    for label, acc in rows:
        cells = [_pct(acc["groups"].get(g, {}).get("accuracy")) for g in groups]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_pct(acc['avg'])} | {_pct(acc['std'])} |")
    return lines + [""]


def _bias_table(models: dict, dataset: str, protocol: str, summary: str) -> list[str]:
    rows = [(label, m["datasets"][dataset][protocol]["at_fpr"]) for label, m in models.items()
            if m["datasets"].get(dataset, {}).get(protocol)]
    if not rows:
        return []
    fprs = [r["target_fpr"] for r in rows[0][1]]
    lines = ["| model | " + " | ".join(_fmt_f(f) for f in fprs) + " |", "|---" * (len(fprs) + 1) + "|"]
    for label, at in rows:
        cells = []
        for r in at:
            if not r["measurable"]:
                cells.append("not measurable")
            else:
                cells.append(_num((r["summaries"] or {}).get(summary)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _detail_table(models: dict, dataset: str, protocol: str) -> list[str]:
    rows = [(label, m["datasets"][dataset][protocol]["at_fpr"]) for label, m in models.items()
            if m["datasets"].get(dataset, {}).get(protocol)]
    if not rows:
        return []
    groups = list(rows[0][1][0]["groups"])
    lines = ["Group FPR (TPR) at the global threshold; * = fewer than 10 expected false positives "
             "(see the 95 % Wilson intervals in report.json).", "",
             "| model | overall FPR | threshold | " + " | ".join(groups) + " | std/f | max/min | Gini |",
             "|---" * (len(groups) + 6) + "|"]
    for label, at in rows:
        for r in at:
            if not r["measurable"]:
                lines.append(f"| {label} | {_fmt_f(r['target_fpr'])} | not measurable (< 1/{r['n_impostor']}) | "
                             + " | ".join("" for _ in groups) + " | | | |")
                continue
            cells = []
            for g in groups:
                gr = r["groups"][g]
                cells.append(f"{gr['fpr']:.2e} ({100 * gr['tpr']:.1f}%)" + ("*" if gr["low_count"] else ""))
            s = r["summaries"] or {}
            lines.append(f"| {label} | {_fmt_f(r['target_fpr'])} | {r['threshold']:.4f} | " + " | ".join(cells)
                         + f" | {_num(s.get('std_over_f'))} | {_num(s.get('max_min_ratio'))} | {_num(s.get('gini'))} |")
    return lines + [""]


def _input_cell(info: dict) -> str:
    """How a model was fed: its convention and where that came from, its fixed batch, pruned graph inputs."""
    if not info:
        return ""
    origins = sorted(set(info.get("origin", {}).values()))
    cell = f"{info['convention']} ({', '.join(origins)})" if origins else info["convention"]
    if info.get("fixed_batch"):
        cell += f", fixed batch {info['fixed_batch']}"
    if info.get("pruned_inputs"):
        cell += f", {info['pruned_inputs']} stale graph inputs pruned (copy)"
    return cell


def render_markdown(report: dict, figures: dict[str, list[str]] | None = None) -> str:
    """The Markdown report: per data set, the accuracy table, the bias-degree tables and the per-group details."""
    models = report["models"]
    bias = report.get("bias_degree", "std_over_f")
    datasets = list(dict.fromkeys(d for m in models.values() for d in m["datasets"]))
    out = ["# Fairness evaluation", "",
           "| model | file | sha256 | input |", "|---|---|---|---|"]
    out += [f"| {label} | `{m['model']}` | `{m['sha256'][:16]}` | {_input_cell(m.get('input') or {})} |"
            for label, m in models.items()]
    out += ["", f"**Bias degree** = {SUMMARY_LABELS[bias]} at the global threshold that gives overall FPR f "
            "(lower is better); max/min and the Gini form of the ISO/IEC 19795-10 false-positive "
            "differential are in the detail tables.", ""]
    for dataset in datasets:
        out += [f"## {dataset}", ""]
        notes = [n for m in models.values() for n in m["datasets"].get(dataset, {}).get("notes", [])]
        out += [f"> {n}" for n in dict.fromkeys(notes)] + ([""] if notes else [])
        out += _accuracy_table(models, dataset)
        for protocol, title in (("pairs", "pair list"), ("dense", "dense, all within-group impostor pairs")):
            table = _bias_table(models, dataset, protocol, bias)
            if table:
                out += [f"### Bias degree ({SUMMARY_LABELS[bias]}), {title}", ""] + table
                out += [f"#### Per group, {title}", ""] + _detail_table(models, dataset, protocol)
        for fig in (figures or {}).get(dataset, []):
            out += [f"![{fig}]({fig})", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- figures
def _figure(n_panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * n_panels, 4.2), dpi=100)
    axes = fig.subplots(1, n_panels, squeeze=False, sharey=True)[0]
    return fig, axes


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


@dataclass(frozen=True)
class CurvePlot:
    """One kind of figure: which curve of the results, its axes, and where its legend goes."""

    curve: str  # key of the curves in a protocol's results ("roc", "fpr_vs_threshold")
    x: str
    y: str
    log_axis: str  # "x" or "y": the FPR axis, drawn in log scale (points at FPR 0 dropped)
    xlabel: str
    ylabel: str
    legend: str
    mark_thresholds: bool = False  # a dotted line at the threshold of every measurable target FPR


#: ROC per group (log FPR axis), and each group's FPR against the global threshold
PLOTS = (
    CurvePlot("roc", "fpr", "tpr", "x", "false positive rate (group)", "true positive rate", "lower right"),
    CurvePlot("fpr_vs_threshold", "threshold", "fpr", "y", "global similarity threshold", "group false positive rate",
              "upper right", mark_thresholds=True),
)


def _panels(models: dict, dataset: str, protocol: str, curve: str) -> list[tuple[str, dict]]:
    """(model label, results) of every model that has ``curve`` for ``dataset``/``protocol``."""
    return [(label, m["datasets"][dataset][protocol]) for label, m in models.items()
            if (m["datasets"].get(dataset, {}).get(protocol) or {}).get(curve)]


def plot_curves(models: dict, dataset: str, protocol: str, plot: CurvePlot, path: Path) -> bool:
    """One panel per model with every group's curve; returns False when no model has the curve."""
    panels = _panels(models, dataset, protocol, plot.curve)
    if not panels:
        return False
    fig, axes = _figure(len(panels))
    for ax, (label, data) in zip(axes, panels):
        for group, curve in data[plot.curve].items():
            x, y = np.asarray(curve[plot.x], float), np.asarray(curve[plot.y], float)
            keep = (x if plot.log_axis == "x" else y) > 0
            ax.plot(x[keep], y[keep], label=group)
        if plot.mark_thresholds:
            for r in data["at_fpr"]:
                if r["measurable"]:
                    ax.axvline(r["threshold"], color="grey", lw=0.6, ls=":")
        (ax.set_xscale if plot.log_axis == "x" else ax.set_yscale)("log")
        ax.set_xlabel(plot.xlabel)
        ax.set_title(f"{label}: {dataset} ({protocol})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc=plot.legend)
    axes[0].set_ylabel(plot.ylabel)
    _save_figure(fig, path)
    return True


def write_report(report: dict, output_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, the PNG figures and ``report.md`` into ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = to_jsonable(report)
    models = report["models"]
    written: dict[str, Path] = {}
    figures: dict[str, list[str]] = {}
    datasets = list(dict.fromkeys(d for m in models.values() for d in m["datasets"]))
    for dataset in datasets:
        for protocol in ("pairs", "dense"):
            for plot in PLOTS:
                name = f"{dataset}_{protocol}_{plot.curve}.png"
                if plot_curves(models, dataset, protocol, plot, output_dir / name):
                    figures.setdefault(dataset, []).append(name)
                    written[name] = output_dir / name
    atomic_write(output_dir / "report.json", lambda tmp: _write_text(tmp, json.dumps(report, indent=1, allow_nan=False)))
    atomic_write(output_dir / "report.md", lambda tmp: _write_text(tmp, render_markdown(report, figures)))
    written["report.json"] = output_dir / "report.json"
    written["report.md"] = output_dir / "report.md"
    return written
