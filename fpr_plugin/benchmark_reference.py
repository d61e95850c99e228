"""The benchmark's 5-seed figures for the demo's methods, shipped beside the code (``benchmark_reference.json``).

``bench/benchmark_reference.py`` writes the file from the committed results of
``bench/fairness_synthetic.py`` and ``bench/calibration_synthetic.py``; a test
checks that it is what those results give. ``fpr-demo`` prints it after its own
one-seed table, so that the single run is read against the seed noise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["REFERENCE_FILE", "format_reference", "load_reference"]

REFERENCE_FILE = Path(__file__).with_name("benchmark_reference.json")


def load_reference(design: str, size: str, path: Path = REFERENCE_FILE) -> dict[str, Any] | None:
    """The shipped reference table when it is of ``design`` at ``size``; None otherwise (or when absent)."""
    if not path.is_file():
        return None
    reference = json.loads(path.read_text(encoding="utf-8"))
    return reference if (reference.get("design"), reference.get("size")) == (design, size) else None


def _ci(value: Sequence[float] | None, signed: bool = False) -> str:
    """``mean ± half-width`` of a ``[mean, half, n]`` entry (3 decimals below 0.1, or below 1 unsigned)."""
    if not value:
        return "n/a"
    mean, half = value[0], value[1]
    digits = 3 if abs(mean) < 0.1 or (not signed and abs(mean) < 1) else 2
    text = f"{mean:{'+' if signed else ''}.{digits}f}"
    return text if half is None or math.isnan(half) else f"{text} ± {half:.2g}"


def format_reference(reference: dict[str, Any], methods: Sequence[str] | None = None, fpr: str = "0.001") -> str:
    """A Markdown table at overall FPR ``fpr``: mean ± 95 % t-interval over seeds, paired changes."""
    hard = reference["hard_group"]
    names = [m for m in (methods or reference["methods"]) if m in reference["methods"]]
    calibrations = sorted({c for m in names for c in reference["methods"][m]["calibrations"]})
    seeds = sorted({s for m in names for s in reference["methods"][m]["seeds"]})
    lines = [f"Benchmark over seeds {seeds} (design {reference['design']}, size {reference['size']}, "
             f"f = {fpr}; mean ± 95 % t-interval; Δ: paired on the same seed; from "
             f"{', '.join(reference.get('sources', []))}):", "",
             "| " + " | ".join(["method", "TPR", f"{hard} FPR/f", "std/f", "Δ std/f vs cosface", "Δ TPR vs cosface",
                                *[f"Δ std/f from {c} (test half)" for c in calibrations]]) + " |",
             "|---" * (6 + len(calibrations)) + "|"]
    for name in names:
        entry = reference["methods"][name]
        at = entry["at_fpr"][fpr]
        cells = [name, _ci(at["tpr"]), _ci(at["hard_fpr_over_f"]), _ci(at["std_over_f"]),
                 _ci(at.get("delta_std_over_f"), signed=True) if name != "cosface" else "",
                 _ci(at.get("delta_tpr"), signed=True) if name != "cosface" else ""]
        cells += [_ci(entry["calibrations"].get(c, {}).get(fpr, {}).get("delta_std_over_f"), signed=True)
                  for c in calibrations]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
