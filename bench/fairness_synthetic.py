"""Fairness of CosFace and the FPR penalty on the synthetic benchmark: validity checks and paired statistics.

For every seed: draw the benchmark (``fpr_plugin.data.synthetic``), train every
method below with ``recipes/synthetic_demo.py`` and that seed (paired: same
data, same initialisation, only the loss differs), embed the held-out test
identities (dense set, flip test) and measure, at the one global threshold
that gives overall FPR f over all within-group impostor pairs: overall TPR,
every group's FPR (a multiple of f) and TPR, the bias summaries (std_g(FPR_g)/f
= bias degree, max/min, Gini) and the spread of per-identity FPR (each test
identity's share of its within-group impostor pairs above the threshold). From
each run's ``metrics.jsonl`` (last epoch): the training loss, the loss's
threshold T_u and the Eq. 9 instance FPR and share of above-threshold entries
per group (CosFace measures them through ``stats_gamma_u``, without a gradient).

Printed:

- **validity checks** per design (from the CosFace runs): the hard group is the
  highest at test on every seed; it holds >= 1.4x its share of the
  above-threshold training entries on every seed, checked for each penalty form
  (the class-weight signal of the paper, the impostor-pair signal of
  ``negatives="pairs"``: a design is a valid benchmark for a form whose signal
  sees the hard group); training is not saturated
  (last-epoch loss >= 0.5); and for ``control``: no group's mean FPR/f differs
  from 1 beyond its 95 % confidence interval over seeds;
- per method: mean and 95 % t-interval over seeds of each figure, and of the
  paired difference against CosFace on the same seed.

Each finished run is appended as one JSON line to ``--results`` (default
``bench/results/fairness_synthetic.jsonl``, committed); runs already there
are skipped, so an interrupted grid resumes where it stopped. Data and run
folders go to ``--work`` (default ``bench_out/fairness_synthetic``).

    python bench/fairness_synthetic.py --design dense --size wide --seeds 0 1 2 3 4
    python bench/fairness_synthetic.py --design control --size wide --methods cosface
    python bench/fairness_synthetic.py --report            # tables from the results file only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "synthetic_demo.py"
RESULTS = REPO / "bench" / "results" / "fairness_synthetic.jsonl"

#: label -> (loss, recipe overrides). CosFace measures the training signal of both penalty forms without a
#: gradient: over class weights at gamma_u 1e-4 (stats_gamma_u) and over the batch's impostor pairs at
#: 1e-2 (stats_pairs_gamma_u), the settings of the methods below.
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cosface": ("cosface", ("loss_params.stats_gamma_u=1e-4", "loss_params.stats_pairs_gamma_u=1e-2")),
    "fpr a0.1 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-4")),
    "tface": ("fpr_penalty_tface", ()),
    # impostor pairs of the batch instead of class weights (negatives="pairs", not in the paper); a batch of
    # 128 has ~8,100 impostor pairs, so gamma_u 1e-2 (k ~ 81) where 1e-4 would leave k = 1
    "fpr pairs a0.1 g1e-2": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-2",
                                             "loss_params.negatives=pairs")),
    "fpr pairs a1 g1e-2": ("fpr_penalty", ("loss_params.alpha=1.0", "loss_params.gamma_u=1e-2",
                                           "loss_params.negatives=pairs")),
    "fpr emb a0.1 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-4",
                                           "loss_params.penalty_grad=embeddings")),
    "fpr a1 g1e-4": ("fpr_penalty", ("loss_params.alpha=1.0", "loss_params.gamma_u=1e-4")),
    # alpha 1 ramped in over the first 2 of 6 epochs (74 steps at size wide: 4,800 images, batch 128)
    "fpr a1 g1e-4 warm": ("fpr_penalty", ("loss_params.alpha=1.0", "loss_params.gamma_u=1e-4",
                                          "loss_params.alpha_warmup=74")),
    "fpr a0.03 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.03", "loss_params.gamma_u=1e-4")),
    "fpr a0.3 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.3", "loss_params.gamma_u=1e-4")),
    "fpr a0.1 g1e-3": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-3")),
    "fpr a0.03 g1e-3": ("fpr_penalty", ("loss_params.alpha=0.03", "loss_params.gamma_u=1e-3")),
    "fpr a0.3 g1e-3": ("fpr_penalty", ("loss_params.alpha=0.3", "loss_params.gamma_u=1e-3")),
    "fpr a1 g1e-3": ("fpr_penalty", ("loss_params.alpha=1.0", "loss_params.gamma_u=1e-3")),
    "fpr emb a0.3 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.3", "loss_params.gamma_u=1e-4",
                                           "loss_params.penalty_grad=embeddings")),
}
#: The group each design makes hard (None: no group should stand out).
HARD_GROUP = {"dense": "Dense", "varied": "Dense", "tight": "Dense", "tighter": "Dense", "tightest": "Dense",
              "rare": "Rare",
              "control": None, "null": None}
FPRS = (1e-4, 1e-3, 1e-2)
SHARE_FACTOR = 1.4  # the hard group must hold >= this multiple of its row share above T_u
#: the two penalty forms: the metrics.jsonl key prefix of the signal CosFace measured for each
FORMS = {"classes": "", "pairs": "pairs_"}
MIN_SEEDS = 5  # seeds a design needs before it can be called valid
SATURATED_LOSS = 0.5  # last-epoch training loss below this: the training set is memorised


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace(".", "p")


def run_key(design: str, size: str, seed: int, method: str, extra: list[str]) -> str:
    """The identity of one run in the results file."""
    return json.dumps([design, size, seed, method, sorted(extra)])


def t_quantile(df: int) -> float:
    """Two-sided 95 % Student-t quantile (t_{0.975, df})."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy is present with the test extras
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
        return table.get(df, 2.0)


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95 % t-interval over the values (nan with one value), and their count."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    if len(vals) == 1:
        return vals[0], math.nan, 1
    return float(np.mean(vals)), t_quantile(len(vals) - 1) * float(np.std(vals, ddof=1)) / math.sqrt(len(vals)), len(vals)


def fmt_ci(values: list[float], digits: int = 3) -> str:
    m, h, n = mean_ci(values)
    if n == 0:
        return "n/a"
    text = f"{m:.{digits}g}" if math.isnan(h) else f"{m:.{digits}g} ± {h:.2g}"
    missing = len(values) - n
    return text + (f" ({missing} n/a)" if missing else "")


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

def embed_dense(run_dir: Path, dense_csv: Path, batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip-test embeddings (emb(x) + emb(flip(x))) of the dense set with the run's ``model.pt``."""
    import cv2
    import torch

    from fpr_plugin.export import build_model, load_checkpoint

    state, config = load_checkpoint(run_dir / "model.pt")
    model = build_model(state, config)
    rows = [line.split(",") for line in dense_csv.read_text().splitlines()[1:]]
    images = np.stack([cv2.imread(str(dense_csv.parent / r[0]))[:, :, ::-1] for r in rows])
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float()
            x = (x - 127.5) / 127.5
            out.append((model(x) + model(x.flip(3))).numpy())
    return np.concatenate(out), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])


def identity_fpr(emb: np.ndarray, identities: np.ndarray, groups: np.ndarray, threshold: float) -> dict[str, list[float]]:
    """Per group, every test identity's FPR: its within-group impostor pairs with score > threshold, over their count."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out: dict[str, list[float]] = {}
    for g in sorted(set(groups.tolist())):
        idx = np.flatnonzero(groups == g)
        sim = x[idx] @ x[idx].T
        ids = identities[idx]
        impostor = ids[:, None] != ids[None, :]
        above = ((sim > threshold) & impostor).sum(axis=1)
        names, inverse = np.unique(ids, return_inverse=True)
        fp = np.bincount(inverse, weights=above)
        n = np.bincount(inverse, weights=impostor.sum(axis=1))
        out[g] = (fp / n).tolist()
    return out


def training_stats(run_dir: Path, last_epoch_only: bool = True) -> dict[str, float]:
    """Means over the last epoch's (or every) ``metrics.jsonl`` record of the loss, T_u and the per-group statistics."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not records:
        return {}
    if last_epoch_only:
        last_epoch = max(r.get("epoch", 0) for r in records)
        records = [r for r in records if r.get("epoch", 0) == last_epoch]
    kept = ("threshold", "penalty_mean", "loss", "instance_fpr_mean")
    keys = {k for r in records for k, v in r.items()
            if isinstance(v, (int, float)) and (k.removeprefix("pairs_") in kept
                                                or k.removeprefix("pairs_").startswith("group_"))}
    return {k: float(np.mean([r[k] for r in records if k in r])) for k in sorted(keys)}


def run_one(design: str, size: str, seed: int, label: str, data: Path, work: Path, extra: list[str]) -> dict:
    """Train one method on one seed's data and evaluate it; returns the result record."""
    from fpr_plugin.eval.dense import dense_fairness
    from fpr_plugin.train.config import load_config
    from fpr_plugin.train.trainer import train

    loss, overrides = METHODS[label]
    run_dir = work / f"{design}_{size}" / f"seed{seed}" / _slug(label)
    if run_dir.exists():  # an interrupted run: start it again
        shutil.rmtree(run_dir)
    cfg = load_config(RECIPE, loss=loss, overrides=[f"rec={data / 'train'}", f"output={run_dir}", f"seed={seed}",
                                                    *overrides, *extra])
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    emb, identities, groups = embed_dense(run_dir, data / "dense" / "dense.csv")
    dense = dense_fairness(emb, identities, groups, fprs=FPRS)
    at = {}
    for entry in dense.at_fpr:
        g, f = entry["groups"], entry["target_fpr"]
        per_identity = identity_fpr(emb, identities, groups, entry["threshold"])
        at[f"{f:g}"] = {
            "threshold": entry["threshold"],
            "tpr": sum(v["tp"] for v in g.values()) / sum(v["n_genuine"] for v in g.values()),
            "group_fpr_over_f": {name: v["fpr"] / f for name, v in g.items()},
            "group_tpr": {name: v["tpr"] for name, v in g.items()},
            "group_fp": {name: v["fp"] for name, v in g.items()},
            "summaries": entry["summaries"],
            "identity_fpr_over_f": {name: _spread(np.asarray(v) / f) for name, v in per_identity.items()},
            "identity_fpr_over_f_all": _spread(np.concatenate([np.asarray(v) for v in per_identity.values()]) / f),
        }
    return {"key": run_key(design, size, seed, label, extra), "design": design, "size": size, "seed": seed,
            "method": label, "loss": loss, "overrides": list(overrides), "extra": list(extra),
            "train_s": round(train_s, 1), "at_fpr": at, "training": training_stats(run_dir),
            "training_all_epochs": training_stats(run_dir, last_epoch_only=False)}


def _spread(values: np.ndarray) -> dict[str, float]:
    """Spread of per-identity FPR/f: std, median, 90th and 99th percentile, max, share of identities at 0."""
    return {"std": float(values.std(ddof=1)), "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max()), "zero_share": float((values == 0).mean())}


# ----------------------------------------------------------------------------------------------
# Results file
# ----------------------------------------------------------------------------------------------

def load_results(path: Path) -> list[dict]:
    """Every complete JSON line of the results file (a torn last line is ignored)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_result(path: Path, result: dict) -> None:
    """Append one result as a JSON line (one write, flushed and synced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if torn else "") + json.dumps(result, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def hard_share(result: dict, design: str, form: str) -> float | None:
    """The hard group's share of the above-T_u training entries of ``form``'s signal (None: not measured)."""
    return result["training"].get(f"{FORMS[form]}group_above_share/{HARD_GROUP[design]}")


def validity(results: list[dict], design: str, size: str, groups: list[str]) -> list[str]:
    """Print the validity checks of one design from its CosFace runs; returns the penalty forms it is valid for."""
    base = sorted((r for r in results if r["design"] == design and r["size"] == size and r["method"] == "cosface"),
                  key=lambda r: r["seed"])
    print(f"\n### validity checks: design {design}, size {size}, CosFace on seeds {[r['seed'] for r in base]}\n")
    if not base:
        print("no CosFace run yet: not checked")
        return []
    hard = HARD_GROUP.get(design)

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.0f} %"

    rows = []
    for r in base:
        at = r["at_fpr"]["0.001"]["group_fpr_over_f"]
        loss = r["training"].get("loss")
        rows.append([str(r["seed"]), *[f"{at[g]:.2f}" for g in groups],
                     *[pct(r["training"].get(f"{prefix}group_above_share/{g}")) for prefix in FORMS.values() for g in groups],
                     "n/a" if loss is None else f"{loss:.2f}", max(at, key=at.get)])
    _table(["seed", *[f"FPR/f {g} @1e-3" for g in groups],
            *[f"share above T_u ({form}) {g}" for form in FORMS for g in groups],
            "last-epoch loss", "highest at test"], rows)
    common = [(f"at least {MIN_SEEDS} seeds ({len(base)})", len(base) >= MIN_SEEDS)]
    form_checks: dict[str, tuple[str, bool]] = {}
    if hard is not None:
        row_share = _row_share(design, size, hard)
        highest_every = all(max(r["at_fpr"]["0.001"]["group_fpr_over_f"].items(), key=lambda kv: kv[1])[0] == hard
                            for r in base)
        common.append((f"{hard} is the highest group at test (f = 1e-3) on every seed", highest_every))
        for form in FORMS:
            shares = [hard_share(r, design, form) for r in base]
            unmeasured = [r["seed"] for r, v in zip(base, shares) if v is None]
            text = (f"{hard} holds >= {SHARE_FACTOR}x its share of training rows ({100 * row_share:.1f} %) of the "
                    f"above-T_u entries of the {form} signal on every seed"
                    + (f" (not measured on seeds {unmeasured})" if unmeasured else ""))
            form_checks[form] = (text, not unmeasured and all(v >= SHARE_FACTOR * row_share for v in shares))
    common.append((f"training not saturated (last-epoch loss >= {SATURATED_LOSS}) on every seed",
                   all((r["training"].get("loss") or 0.0) >= SATURATED_LOSS for r in base)))
    if hard is None:
        inside = []
        for g in groups:
            m, h, _ = mean_ci([r["at_fpr"]["0.001"]["group_fpr_over_f"][g] for r in base])
            inside.append(abs(m - 1.0) <= h)
            print(f"- {g}: FPR/f at 1e-3 = {m:.2f} ± {h:.2f} (95 % CI over seeds)")
        common.append(("no group's FPR/f differs from 1 beyond its 95 % CI (no gap beyond noise)", all(inside)))
        max_min = [r["at_fpr"]["0.001"]["summaries"]["max_min_ratio"] for r in base if r["at_fpr"]["0.001"]["summaries"]]
        print(f"- noise floor: max/min at 1e-3 = {fmt_ci(max_min)}, std/f = "
              f"{fmt_ci([r['at_fpr']['0.001']['summaries']['std_over_f'] for r in base])}")
    print()
    for text, ok in [*common, *form_checks.values()]:
        print(f"- [{'PASS' if ok else 'FAIL'}] {text}")
    passed = all(ok for _, ok in common)
    forms = [form for form, (_, ok) in form_checks.items() if passed and ok] if hard is not None else (
        list(FORMS) if passed else [])
    verdict = (f"VALID as a benchmark for the penalty over {' and over '.join(forms)}" if forms
               else "NOT VALID as a benchmark")
    print(f"\n**design {design} at size {size}: {verdict}**")
    return forms


def seed_failures(result: dict, design: str, groups: list[str]) -> list[str]:
    """The per-seed validity checks that one CosFace run fails (empty: it passes them for some penalty form)."""
    hard, failures = HARD_GROUP.get(design), []
    training = result["training"]
    if (training.get("loss") or 0.0) < SATURATED_LOSS:
        failures.append(f"saturated (last-epoch loss {training.get('loss')})")
    if hard is not None:
        at = result["at_fpr"]["0.001"]["group_fpr_over_f"]
        if max(at, key=at.get) != hard:
            failures.append(f"{max(at, key=at.get)} is highest at test, not {hard}")
        row_share = _row_share(design, result["size"], hard)
        shares = {form: hard_share(result, design, form) for form in FORMS}
        if not any(v is not None and v >= SHARE_FACTOR * row_share for v in shares.values()):
            failures.append(f"{hard} holds " + ", ".join(
                f"{'n/a' if v is None else f'{100 * v:.1f} %'} ({form})" for form, v in shares.items())
                + f" of above-T_u entries, < {SHARE_FACTOR} x {100 * row_share:.1f} %")
    return failures


def _row_share(design: str, size: str, group: str) -> float:
    """The share of training images (rows) of ``group`` in the design at ``size``."""
    from fpr_plugin.data.synthetic import DESIGNS, SIZES, train_identity_count

    counts = {g.name: train_identity_count(SIZES[size], g) for g in DESIGNS[design]}
    return counts[group] / sum(counts.values())


def _paired(results: list[dict], method: str, value) -> list[float]:
    """Per seed: value(method run) - value(cosface run) of the same design, size and seed."""
    base = {(r["design"], r["size"], r["seed"]): r for r in results if r["method"] == "cosface"}
    out = []
    for r in results:
        b = base.get((r["design"], r["size"], r["seed"]))
        if r["method"] == method and b is not None:
            a_v, b_v = value(r), value(b)
            out.append(None if a_v is None or b_v is None else a_v - b_v)
    return out


def _summary(r: dict, key: str, name: str):
    s = r["at_fpr"][key]["summaries"]
    return None if not s else s.get(name)


def print_tables(results: list[dict], design: str, size: str, groups: list[str]) -> None:
    """Mean and 95 % t-interval over seeds of every figure, per method, and paired differences against CosFace."""
    results = [r for r in results if r["design"] == design and r["size"] == size]
    if not results:
        print(f"no results for design {design}, size {size}")
        return
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    hard = HARD_GROUP.get(design) or groups[-1]
    seeds = sorted({r["seed"] for r in results})
    print(f"\n## design {design}, size {size}: seeds {seeds}; mean ± 95 % t-interval over seeds "
          "(dense within-group impostor pairs); Δ = method − CosFace on the same seed")
    for f in FPRS:
        key = f"{f:g}"
        print(f"\n### global threshold at overall FPR {key}\n")
        rows = []
        for m in methods:
            rs = [r for r in results if r["method"] == m]
            rows.append([m, str(len(rs)), fmt_ci([r["at_fpr"][key]["tpr"] for r in rs]),
                         *[fmt_ci([r["at_fpr"][key]["group_fpr_over_f"][g] for r in rs]) for g in groups],
                         fmt_ci([r["at_fpr"][key]["group_tpr"][hard] for r in rs]),
                         fmt_ci([_summary(r, key, "std_over_f") for r in rs]),
                         fmt_ci([_summary(r, key, "max_min_ratio") for r in rs]),
                         fmt_ci([_summary(r, key, "gini") for r in rs]),
                         fmt_ci([r["at_fpr"][key]["identity_fpr_over_f_all"]["std"] for r in rs]),
                         fmt_ci([r["at_fpr"][key]["identity_fpr_over_f_all"]["p99"] for r in rs])])
        _table(["method", "seeds", "TPR", *[f"FPR/f {g}" for g in groups], f"TPR {hard}", "std/f", "max/min",
                "Gini", "identity FPR/f std", "identity FPR/f p99"], rows)
        print(f"\npaired differences against CosFace at {key} (95 % t-interval over seeds; an interval "
              "that excludes 0 is a difference beyond seed noise)\n")
        rows = []
        for m in methods:
            if m == "cosface":
                continue
            rows.append([m, fmt_ci(_paired(results, m, lambda r: r["at_fpr"][key]["tpr"])),
                         fmt_ci(_paired(results, m, lambda r: r["at_fpr"][key]["group_fpr_over_f"][hard])),
                         fmt_ci(_paired(results, m, lambda r: r["at_fpr"][key]["group_tpr"][hard])),
                         fmt_ci(_paired(results, m, lambda r: _summary(r, key, "std_over_f"))),
                         fmt_ci(_paired(results, m, lambda r: _summary(r, key, "max_min_ratio"))),
                         fmt_ci(_paired(results, m, lambda r: _summary(r, key, "gini"))),
                         fmt_ci(_paired(results, m, lambda r: r["at_fpr"][key]["identity_fpr_over_f_all"]["std"])),
                         " ".join("n/a" if v is None else f"{v:+.2f}"
                                  for v in _paired(results, m, lambda r: _summary(r, key, "std_over_f")))])
        _table(["method", "Δ TPR", f"Δ FPR/f {hard}", f"Δ TPR {hard}", "Δ std/f", "Δ max/min", "Δ Gini",
                "Δ identity FPR/f std", "Δ std/f per seed"], rows)
    print("\n### training, last epoch (metrics.jsonl): loss, T_u, instance FPR / gamma_u and share above T_u per "
          "group, of the class-weight signal and (where measured: CosFace, the pair form) of the impostor-pair signal\n")
    rows = []
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        gamma = 1e-3 if "g1e-3" in m else 1e-2 if "pairs" in m else 1e-4

        def column(key: str, scale: float = 1.0) -> str:
            return fmt_ci([None if r["training"].get(key) is None else scale * r["training"][key] for r in rs])

        pairs_prefix = "pairs" not in m  # the pair form's own signal is its main one, in the share columns
        rows.append([m, column("loss"), column("threshold"),
                     *[column(f"group_fpr_mean/{g}", 1 / gamma) for g in groups],
                     *[column(f"group_above_share/{g}", 100) for g in groups],
                     *([column(f"pairs_group_above_share/{g}", 100) for g in groups] if pairs_prefix
                       else ["(as left)"] * len(groups)),
                     fmt_ci([r["train_s"] for r in rs])])
    _table(["method", "loss", "T_u", *[f"inst. FPR/γ {g}" for g in groups], *[f"share % {g}" for g in groups],
            *[f"pair share % {g}" for g in groups], "train s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help=f"subset of: {', '.join(METHODS)}")
    parser.add_argument("--size", default="wide", help="synthetic size (tiny, demo, wide)")
    parser.add_argument("--design", nargs="+", default=["dense"], help="synthetic design(s): rare, dense, control")
    parser.add_argument("--results", default=str(RESULTS), help="JSON-lines results file (appended, resumable)")
    parser.add_argument("--work", default="bench_out/fairness_synthetic", help="data and run folders")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for every run (e.g. num_epoch=8)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--report", action="store_true", help="print the tables from the results file, train nothing")
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop a design (exit status 3) as soon as one CosFace seed fails a per-seed validity check")
    parser.add_argument("--require-valid", action="store_true",
                        help="exit with status 3 unless every --design passes its validity checks for some penalty form")
    args = parser.parse_args(argv)

    from fpr_plugin.data.synthetic import DESIGNS, make_synthetic

    for design in args.design:
        if design not in DESIGNS:
            parser.exit(2, f"fairness_synthetic: error: --design {design!r}: expected one of {sorted(DESIGNS)}\n")
    results_path, work = Path(args.results), Path(args.work)
    if not args.report:
        import torch

        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        done = {r.get("key") for r in load_results(results_path)}
        # method-major per design: CosFace on every seed first (the validity checks need only those)
        for design in args.design:
            names = [g.name for g in DESIGNS[design]]
            earlier = [r for r in load_results(results_path) if r.get("design") == design and r.get("size") == args.size
                       and r.get("method") == "cosface" and sorted(r.get("extra", [])) == sorted(args.extra)
                       and r.get("seed") in args.seeds]
            failed = [(r["seed"], seed_failures(r, design, names)) for r in earlier if seed_failures(r, design, names)]
            if args.fail_fast and failed:
                print(f"design {design}: seed {failed[0][0]} already fails: {'; '.join(failed[0][1])}; stopping")
                return 3
            for label in args.methods:
                for seed in args.seeds:
                    key = run_key(design, args.size, seed, label, args.extra)
                    if key in done:
                        continue
                    data = work / f"data_{design}_{args.size}_seed{seed}"
                    if not (data / "synthetic.json").is_file():
                        print(f"[{time.perf_counter() - start:6.0f} s] drawing {data}", flush=True)
                        make_synthetic(data, seed=seed, size=args.size, design=design, overwrite=True)
                    print(f"[{time.perf_counter() - start:6.0f} s] {design} {args.size} seed {seed}: {label}", flush=True)
                    result = run_one(design, args.size, seed, label, data, work, args.extra)
                    append_result(results_path, result)
                    done.add(key)
                    failures = seed_failures(result, design, [g.name for g in DESIGNS[design]]) if label == "cosface" else []
                    if args.fail_fast and failures:
                        print(f"design {design}, seed {seed}: {'; '.join(failures)}: not a valid benchmark, stopping")
                        return 3
    results = [r for r in load_results(results_path) if sorted(r.get("extra", [])) == sorted(args.extra)]
    valid = True
    for design in args.design:
        groups = [g.name for g in DESIGNS[design]]
        valid &= bool(validity(results, design, args.size, groups))
        print_tables(results, design, args.size, groups)
    return 3 if args.require_valid and not valid else 0


if __name__ == "__main__":
    sys.exit(main())
