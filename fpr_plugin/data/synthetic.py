"""Synthetic demographic face benchmark: rendered faces, a training record set, RFW-layout and dense test sets.

No real face data can be downloaded on a fresh machine, so this module draws
face-like images (:mod:`fpr_plugin.data.synthetic_faces`: photos with five
landmarks, aligned with insightface's ``norm_crop`` as real data is). Groups
differ in how they are drawn and how often they occur in training (see
:data:`DESIGNS`), so that a margin-loss baseline ends up with unequal false
positive rates across groups at one global threshold: the situation the FPR
penalty is meant to fix.

``fpr-make-synthetic OUT --seed S --size demo`` writes::

    OUT/train/            train.rec, train.idx, property, groups.tsv (record set)
    OUT/rfw/test/data/<Group>/<id>/<id>_NNNN.jpg        unaligned photos
    OUT/rfw/test/txts/<Group>/<Group>_pairs.txt         10 folds: genuine, then impostor lines
    OUT/rfw/test/txts/<Group>/<Group>_lmk.txt           path, label, 5 landmarks
    OUT/dense/dense.csv, OUT/dense/images/...           aligned 112x112 test faces
    OUT/synthetic.json                                  seed, size, design, counts

Everything is a pure function of the seed (same seed, same bytes).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from fpr_plugin.data.synthetic_faces import (
    ALIGNED_SIZE,
    FaceIdentity,
    GroupSpec,
    align_face,
    encode_jpeg,
    render_photo,
    sample_identity,
)


@dataclass(frozen=True)
class SizeSpec:
    """How much data to draw: identities and images per group, pairs per fold."""

    train_identities: int  # per group of train_weight 1
    train_images: int  # per training identity
    test_identities: int  # per group (>= 20: two per fold)
    test_images: int  # per test identity (>= 2)
    pairs_per_fold: int  # genuine pairs per fold and group (as many impostor pairs)


_TONES = {"light": (170.0, 190.0, 225.0), "olive": (120.0, 160.0, 200.0),
          "tan": (100.0, 140.0, 185.0), "umber": (80.0, 115.0, 160.0), "brown": (60.0, 90.0, 135.0)}
_DARK_HAIR = (0.0, 0.0, -1.5, 0.0, -1.0, 0.0)  # latent mean of COLOUR_ATTRIBUTES: dark hair, brown eyes

def _varied(spread: float) -> tuple[GroupSpec, ...]:
    """The ``varied`` family: three common groups in unclipped tones, Dense at ``spread`` with 1.5x the variation."""
    return (GroupSpec("Common1", _TONES["olive"]), GroupSpec("Common2", _TONES["tan"]),
            GroupSpec("Common3", _TONES["umber"]),
            GroupSpec("Dense", _TONES["brown"], shape_spread=spread, colour_spread=spread, variation=1.5))


#: Group designs. ``rare``: group ``Rare`` has a quarter of the training identities of
#: each other group and little colour variation (dark hair and eyes, so its identities
#: differ mainly in geometry); it has a test gap that the training signal of an FPR
#: penalty does not see (the documented counter-example). ``dense``: group ``Dense`` has
#: identities closer together in every attribute (spread 0.4), equal training share;
#: with the ``wide`` size (many identities, few images) its training samples are also
#: over the FPR threshold more often. ``control``: four groups that differ only in mean
#: skin tone, equal shares (expected: no gap beyond seed noise). ``varied``: like ``dense``
#: (group ``Dense``: spread 0.55) but its photos of one person also vary 1.5x more, and the
#: common groups use skin tones whose identity colours stay below 255 (the ``light`` tone's
#: red channel is clipped for many identities, which removes part of their skin variation
#: and may make ``Common1``/``A`` a hidden hard group in the other designs).
#: ``tighter``/``tightest``: ``tight`` at spread 0.40/0.30; ``null``: four identical groups (one tone), the noise floor.
#: ``bench/fairness_synthetic.py`` checks which designs are valid benchmarks.
DESIGNS: dict[str, tuple[GroupSpec, ...]] = {
    "rare": (
        GroupSpec("Common1", _TONES["light"]),
        GroupSpec("Common2", _TONES["olive"]),
        GroupSpec("Common3", _TONES["tan"]),
        GroupSpec("Rare", _TONES["brown"], shape_spread=0.6, colour_spread=0.3, colour_mean=_DARK_HAIR, train_weight=0.25),
    ),
    "dense": (
        GroupSpec("Common1", _TONES["light"]),
        GroupSpec("Common2", _TONES["olive"]),
        GroupSpec("Common3", _TONES["tan"]),
        GroupSpec("Dense", _TONES["brown"], shape_spread=0.4, colour_spread=0.4),
    ),
    "varied": _varied(0.55),
    # ``varied`` with the Dense identities closer still (spread 0.45): tuned after varied's seed 2 gave
    # Dense only 1.18x its share of the above-T_u training entries (the bar is 1.4x)
    "tight": _varied(0.45),
    # spread 0.40: tuned after tight's seeds 2 and 4 gave Dense 29 % and 12 % of the above-T_u
    # training entries (the bar is 1.4 x 25 % = 35 %)
    "tighter": _varied(0.40),
    # spread 0.30: tuned after tighter's seed 2 gave Dense 32 % of the above-T_u training entries
    "tightest": _varied(0.30),
    # four identically drawn groups (one skin tone): the noise floor of the benchmark itself, where
    # ``control`` also measures what the skin tone alone does to the renderer's faces
    "null": (
        GroupSpec("A", _TONES["tan"]),
        GroupSpec("B", _TONES["tan"]),
        GroupSpec("C", _TONES["tan"]),
        GroupSpec("D", _TONES["tan"]),
    ),
    "control": (
        GroupSpec("A", _TONES["light"]),
        GroupSpec("B", _TONES["olive"]),
        GroupSpec("C", _TONES["tan"]),
        GroupSpec("D", _TONES["brown"]),
    ),
}

SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(train_identities=8, train_images=4, test_identities=20, test_images=3, pairs_per_fold=3),
    "demo": SizeSpec(train_identities=120, train_images=10, test_identities=100, test_images=6, pairs_per_fold=60),
    # the same number of training images as "demo", spread over twice the identities (training does not
    # saturate), and 200 test identities per group: about 718k within-group impostor pairs per group, so
    # overall FPR 1e-4 rests on about 72 false positives per group
    "wide": SizeSpec(train_identities=240, train_images=5, test_identities=200, test_images=6, pairs_per_fold=60),
}



# ----------------------------------------------------------------------------------------------
# The benchmark: identities, images, pairs, and the three on-disk layouts
# ----------------------------------------------------------------------------------------------

FOLDS = 10
_TRAIN, _TEST, _CALIB = 0, 1, 2  # stream ids of the per-image random generators


@dataclass(frozen=True)
class Benchmark:
    """The identities of one synthetic benchmark, before any image is drawn."""

    seed: int
    size: SizeSpec
    design: str
    groups: tuple[GroupSpec, ...]
    train: tuple[FaceIdentity, ...]  # index = class id
    test: tuple[FaceIdentity, ...]
    calib: tuple[FaceIdentity, ...] = ()  # a calibration split: other identities of the same groups


def train_identity_count(size: SizeSpec, group: GroupSpec) -> int:
    """Training identities of ``group``: ``round(train_identities * train_weight)``, at least 2."""
    return max(2, int(round(size.train_identities * group.train_weight)))


def build_benchmark(seed: int = 0, size: str | SizeSpec = "demo", design: str = "rare") -> Benchmark:
    """Draw the identities (not the images) of a benchmark, deterministically from ``seed``."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
        size = SIZES[size]
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {sorted(DESIGNS)}, got {design!r}")
    if size.test_identities < 2 * FOLDS or size.test_images < 2:
        raise ValueError(f"test_identities must be >= {2 * FOLDS} and test_images >= 2, got {size}")
    groups = DESIGNS[design]
    train, test, calib = [], [], []
    for index, group in enumerate(groups):
        rng = np.random.default_rng([seed, 7, index])
        prefix = group.name.lower()
        train += [sample_identity(rng, group, f"{prefix}.train{i:04d}") for i in range(train_identity_count(size, group))]
        test += [sample_identity(rng, group, f"{prefix}.test{i:04d}") for i in range(size.test_identities)]
        calib_rng = np.random.default_rng([seed, 13, index])  # its own stream: train and test draws unchanged
        calib += [sample_identity(calib_rng, group, f"{prefix}.calib{i:04d}")
                  for i in range(calibration_identity_count(size))]
    return Benchmark(seed, size, design, groups, tuple(train), tuple(test), tuple(calib))


def calibration_identity_count(size: SizeSpec) -> int:
    """Identities per group of the calibration split: half the test identities, at least 4."""
    return max(4, size.test_identities // 2)


def _image_rng(seed: int, stream: int, identity_index: int, image_index: int) -> np.random.Generator:
    """Independent generator of one image, so any image can be redrawn on its own."""
    return np.random.default_rng([seed, stream, identity_index, image_index])


def _jpeg_quality(rng: np.random.Generator) -> int:
    return int(rng.integers(75, 96))


def iter_train_samples(bench: Benchmark) -> Iterator[tuple[int, bytes]]:
    """``(class id, aligned JPEG bytes)`` of every training image, class by class."""
    for label, identity in enumerate(bench.train):
        for image in range(bench.size.train_images):
            rng = _image_rng(bench.seed, _TRAIN, label, image)
            photo, landmarks = render_photo(identity, rng)
            yield label, encode_jpeg(align_face(photo, landmarks), _jpeg_quality(rng))


def fold_pairs(rng: np.random.Generator, identities: Sequence[str], num_images: int,
               pairs_per_fold: int, folds: int = FOLDS) -> list[tuple[list[tuple], list[tuple]]]:
    """RFW-style pairs: per fold ``(genuine, impostor)`` lists, identities disjoint across folds.

    Genuine pairs are ``(id, n1, n2)``, impostor pairs ``(id1, n1, id2, n2)``; image
    numbers start at 1; both are drawn without replacement within the fold.
    """
    order = [identities[i] for i in rng.permutation(len(identities))]
    result = []
    for fold in range(folds):
        members = order[fold::folds]
        genuine = [(p, a, b) for p in members for a in range(1, num_images + 1) for b in range(a + 1, num_images + 1)]
        impostor = [(p, a, q, b) for i, p in enumerate(members) for q in members[i + 1:]
                    for a in range(1, num_images + 1) for b in range(1, num_images + 1)]
        if min(len(genuine), len(impostor)) < pairs_per_fold:
            raise ValueError(f"fold {fold} has {len(genuine)} genuine and {len(impostor)} impostor candidates, "
                             f"fewer than pairs_per_fold={pairs_per_fold}")
        pick_g = sorted(rng.choice(len(genuine), pairs_per_fold, replace=False))
        pick_i = sorted(rng.choice(len(impostor), pairs_per_fold, replace=False))
        result.append(([genuine[i] for i in pick_g], [impostor[i] for i in pick_i]))
    return result


def _image_name(identity: str, number: int) -> str:
    return f"{identity}_{number:04d}.jpg"


def _write_test_sets(bench: Benchmark, root: Path, progress: bool) -> dict:
    """Write ``rfw/`` (photos, pairs, landmarks) and ``dense/`` (aligned crops + CSV) under ``root``."""
    dense_rows, counts = [], {}
    rfw = root / "rfw" / "test"
    bar = _progress(len(bench.test) * bench.size.test_images, "test images", progress)
    for group_index, group in enumerate(bench.groups):
        members = [(i, ident) for i, ident in enumerate(bench.test) if ident.group == group.name]
        lmk_lines = []
        for label, (index, identity) in enumerate(members):
            folder = rfw / "data" / group.name / identity.name
            (root / "dense" / "images" / group.name / identity.name).mkdir(parents=True, exist_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(1, bench.size.test_images + 1):
                data, aligned, landmarks = _stored_photo(identity, _image_rng(bench.seed, _TEST, index, number))
                name = _image_name(identity.name, number)
                (folder / name).write_bytes(data)
                coords = "\t".join(f"{v:.3f}" for v in landmarks.reshape(-1))
                lmk_lines.append(f"./test/data/{group.name}/{identity.name}/{name}\t{label}\t{coords}\n")
                relative = f"images/{group.name}/{identity.name}/{name}"
                (root / "dense" / relative).write_bytes(aligned)
                dense_rows.append((relative, identity.name, group.name))
                bar.update(1)
        txts = rfw / "txts" / group.name
        txts.mkdir(parents=True, exist_ok=True)
        (txts / f"{group.name}_lmk.txt").write_text("".join(lmk_lines))
        pairs_rng = np.random.default_rng([bench.seed, 11, group_index])
        folds = fold_pairs(pairs_rng, [ident.name for _, ident in members], bench.size.test_images,
                           bench.size.pairs_per_fold)
        lines = []
        for genuine, impostor in folds:
            lines += ["\t".join(str(v) for v in pair) + "\n" for pair in genuine + impostor]
        (txts / f"{group.name}_pairs.txt").write_text("".join(lines))
        counts[group.name] = {"test_identities": len(members), "test_images": len(members) * bench.size.test_images,
                              "pairs": len(lines)}
    bar.close()
    _write_dense_csv(root / "dense" / "dense.csv", dense_rows)
    return counts


def _stored_photo(identity: FaceIdentity, rng: np.random.Generator) -> tuple[bytes, bytes, np.ndarray]:
    """One photo as stored (JPEG bytes), what an aligner makes of the stored photo (JPEG), and its landmarks."""
    photo, landmarks = render_photo(identity, rng)
    data = encode_jpeg(photo, _jpeg_quality(rng))
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return data, encode_jpeg(align_face(stored, landmarks), 95), landmarks


def _write_dense_csv(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "group"])
        writer.writerows(rows)


def _write_calibration_set(bench: Benchmark, root: Path, progress: bool) -> dict:
    """Write ``calib/`` (aligned crops + ``calib.csv``, the dense CSV layout): identities not in the test set."""
    rows, counts = [], {}
    bar = _progress(len(bench.calib) * bench.size.test_images, "calibration images", progress)
    for index, identity in enumerate(bench.calib):
        folder = root / "calib" / "images" / identity.group / identity.name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, bench.size.test_images + 1):
            _, aligned, _ = _stored_photo(identity, _image_rng(bench.seed, _CALIB, index, number))
            name = _image_name(identity.name, number)
            (folder / name).write_bytes(aligned)
            rows.append((f"images/{identity.group}/{identity.name}/{name}", identity.name, identity.group))
            bar.update(1)
        entry = counts.setdefault(identity.group, {"identities": 0, "images": 0})
        entry["identities"] += 1
        entry["images"] += bench.size.test_images
    bar.close()
    _write_dense_csv(root / "calib" / "calib.csv", rows)
    return counts


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def _counted(samples: Iterator[tuple[int, bytes]], bar) -> Iterator[tuple[int, bytes]]:
    for sample in samples:
        bar.update(1)
        yield sample


def make_synthetic(out_dir: str | os.PathLike, *, seed: int = 0, size: str | SizeSpec = "demo", design: str = "rare",
                   overwrite: bool = False, progress: bool = False) -> dict:
    """Generate a synthetic benchmark in ``out_dir`` (train record set, RFW layout, dense set, calibration split).

    The folder is built under a temporary name beside ``out_dir`` (``.<out>.partial-<pid>-*``)
    and swapped in as a whole (:func:`fpr_plugin.atomic.replace_folder`) when complete; the
    leftovers of a killed run are removed, and named on stderr, by the next one. An existing
    ``out_dir`` raises FileExistsError unless ``overwrite``.
    Returns the manifest also written to ``out_dir/synthetic.json``.
    """
    from fpr_plugin.atomic import partial_folder, replace_folder
    from fpr_plugin.data.record_set import write_record_set

    out = Path(out_dir)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a folder; expected a folder (or a new name) "
                              "for the benchmark")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} already exists (pass overwrite=True / --overwrite to replace it)")
    bench = build_benchmark(seed, size, design)
    tmp = partial_folder(out, "fpr-make-synthetic")
    try:
        groups = {label: (ident.name, ident.group) for label, ident in enumerate(bench.train)}
        bar = _progress(len(bench.train) * bench.size.train_images, "train images", progress)
        record = write_record_set(tmp / "train", _counted(iter_train_samples(bench), bar),
                                  image_size=(ALIGNED_SIZE, ALIGNED_SIZE), groups=groups)
        bar.close()
        test_counts = _write_test_sets(bench, tmp, progress)
        calib_counts = _write_calibration_set(bench, tmp, progress)
        manifest = {
            "seed": seed, "size_name": size if isinstance(size, str) else None, "size": asdict(bench.size),
            "design": design,
            "groups": [asdict(g) for g in bench.groups],
            "train": {"num_classes": int(record["num_classes"]), "num_image": int(record["num_image"]),
                      "identities_per_group": {g.name: sum(i.group == g.name for i in bench.train) for g in bench.groups}},
            "test": test_counts,
            "calibration": calib_counts,
            "paths": {"train": "train", "rfw": "rfw", "dense": "dense/dense.csv", "calibration": "calib/calib.csv"},
        }
        (tmp / "synthetic.json").write_text(json.dumps(manifest, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``fpr-make-synthetic OUT [--seed S] [--size tiny|demo|wide] [--design rare|dense|varied|control]``.

    Exit status 2 and one line naming the argument on bad input (``--debug``: the traceback).
    """
    from fpr_plugin.cli_errors import run_cli

    return run_cli("fpr-make-synthetic", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from fpr_plugin.cli_errors import UserError, add_debug_flag

    parser = argparse.ArgumentParser(prog="fpr-make-synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything drawn (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo", help="amount of data (default demo)")
    parser.add_argument("--design", choices=sorted(DESIGNS), default="rare",
                        help="how the groups differ (default rare: one group rare in training)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = add_debug_flag(parser).parse_args(argv)
    if args.seed < 0:
        raise UserError(f"--seed must be an integer >= 0, got {args.seed}")
    manifest = make_synthetic(args.output, seed=args.seed, size=args.size, design=args.design,
                              overwrite=args.overwrite, progress=not args.quiet)
    train = manifest["train"]
    print(f"wrote {args.output}: {train['num_classes']} training identities, {train['num_image']} images; "
          f"test groups {', '.join(manifest['test'])}")
    return 0
