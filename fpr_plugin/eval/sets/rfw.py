"""RFW in its image layout: ``test/data/<Race>/<id>/<id>_NNNN.jpg`` photos and ``test/txts/<Race>/`` pair and
landmark lists (the ``.bin`` variant is :func:`fpr_plugin.eval.sets.bin.load_rfw_bin`)."""
from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from fpr_plugin.eval.sets.base import EvalSet, ImageSet, PairList, fold_ids
from fpr_plugin.text_files import open_text

RFW_RACES = ("African", "Asian", "Caucasian", "Indian")


def _rfw_test_dir(root: Path) -> Path:
    for candidate in (root / "test", root):
        if (candidate / "txts").is_dir() and (candidate / "data").is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: not an RFW folder; expected test/txts/<Race>/<Race>_pairs.txt and "
                            "test/data/<Race>/<id>/<id>_NNNN.jpg (or txts/ and data/ directly)")


def _image_key(path_text: str) -> str:
    """``<id>/<file>``: the last two components of a path, the part every RFW variant agrees on."""
    return "/".join(PurePosixPath(path_text.strip().replace("\\", "/")).parts[-2:])


def read_rfw_landmarks(path: Path) -> dict[str, tuple[np.ndarray, int]]:
    """``<Race>_lmk.txt`` -> ``{"<id>/<file>": (landmarks [5, 2], line number)}``.

    Lines are ``path label x1 y1 ... x5 y5`` (whitespace separated); ``path`` may be
    ``test/data/<Race>/<id>/<file>``, ``./...``, or any path ending in ``<id>/<file>``.
    """
    out = {}
    with open_text(path, "'path label x1 y1 ... x5 y5' lines") as handle:
        for lineno, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 12:
                raise ValueError(f"{path}:{lineno}: expected 12 fields 'path label x1 y1 ... x5 y5', "
                                 f"got {len(fields)}")
            try:
                coords = np.array([float(v) for v in fields[2:]], dtype=np.float32).reshape(5, 2)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: landmark coordinates must be numbers, got {fields[2:]}") from None
            out[_image_key(fields[0])] = (coords, lineno)
    return out


def read_rfw_pairs(path: Path) -> list[tuple[str, int, str, int, bool, int]]:
    """``<Race>_pairs.txt`` -> ``[(id1, n1, id2, n2, issame, line number)]``.

    3 fields ``id n1 n2`` = same person, 4 fields ``id1 n1 id2 n2`` = different
    (tab separated; other whitespace accepted).
    """
    out = []
    with open_text(path, "'id n1 n2' (same person) and 'id1 n1 id2 n2' (different) lines") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) not in (3, 4):
                fields = line.split()
            try:
                if len(fields) == 3:
                    out.append((fields[0], int(fields[1]), fields[0], int(fields[2]), True, lineno))
                elif len(fields) == 4:
                    out.append((fields[0], int(fields[1]), fields[2], int(fields[3]), False, lineno))
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'id n1 n2' (same person) or 'id1 n1 id2 n2' "
                                 f"(different), tab separated, with integer image numbers; got {line.strip()!r}") \
                    from None
    if not out:
        raise ValueError(f"{path}: no pairs found")
    return out


def missing_races_note(where: Path, missing: Sequence[str], pattern: str) -> str:
    """The loud warning of an RFW folder without some races: printed, and kept in the report's notes."""
    note = (f"RFW in {where} lacks the race(s) {', '.join(missing)} ({pattern} not found): the report covers "
            f"{4 - len(missing)} of the 4 groups, so its bias figures are not RFW's")
    print(f"fpr-eval: warning: {note}", file=sys.stderr)
    return note


def _rfw_races(txts: Path, races: Sequence[str] | None) -> list[str]:
    if races is not None:
        return list(races)
    for race in RFW_RACES:  # a race whose folder is there but whose pairs file is not: an error
        if (txts / race).is_dir() and not (txts / race / f"{race}_pairs.txt").is_file():
            raise FileNotFoundError(f"RFW file missing: {txts / race / f'{race}_pairs.txt'} (the folder "
                                    f"{txts / race} is there); expected every race to have its pairs file")
    found = [r for r in RFW_RACES if (txts / r / f"{r}_pairs.txt").is_file()]
    found += sorted(p.name for p in txts.iterdir()
                    if p.is_dir() and p.name not in found and (p / f"{p.name}_pairs.txt").is_file())
    if not found:
        raise FileNotFoundError(f"{txts}: no <Race>/<Race>_pairs.txt found")
    return found


def load_rfw(root: str | Path, races: Sequence[str] | None = None, n_folds: int = 10) -> EvalSet:
    """RFW image layout: 400x400 photos aligned with the ``_lmk.txt`` landmarks, the 10-fold pair lists, and
    every listed image (identity = folder, group = race) for the dense protocol."""
    test = _rfw_test_dir(Path(root))
    txts, data = test / "txts", test / "data"
    sources, landmarks, identities, image_groups, names = [], [], [], [], []
    index: dict[tuple[str, str], int] = {}
    rows = []
    chosen = _rfw_races(txts, races)
    # some of RFW's races but not all: warned; a folder of other groups in RFW's layout is not RFW
    rfw_like = races is None and any(r in chosen for r in RFW_RACES)
    missing = [r for r in RFW_RACES if r not in chosen] if rfw_like else []
    notes = [missing_races_note(txts, missing, "txts/<Race>/<Race>_pairs.txt")] if missing else []
    for race in chosen:
        lmk_file, pairs_file = txts / race / f"{race}_lmk.txt", txts / race / f"{race}_pairs.txt"
        for f in (lmk_file, pairs_file):
            if not f.is_file():
                raise FileNotFoundError(f"RFW file missing: {f}")
        lmk = read_rfw_landmarks(lmk_file)
        for key, (coords, lineno) in lmk.items():
            path = data / race / key
            if not path.is_file():
                raise FileNotFoundError(f"{lmk_file}:{lineno}: image {path} not found")
            index[(race, key)] = len(sources)
            sources.append(path)
            landmarks.append(coords)
            identities.append(f"{race}/{key.split('/')[0]}")
            image_groups.append(race)
            names.append(str(path))
        pairs = read_rfw_pairs(pairs_file)
        folds = fold_ids(len(pairs), n_folds, str(pairs_file))
        for (id1, n1, id2, n2, same, lineno), fold in zip(pairs, folds):
            ends = []
            for ident, num in ((id1, n1), (id2, n2)):
                key = f"{ident}/{ident}_{num:04d}.jpg"
                if (race, key) not in index:
                    path = data / race / key
                    if not path.is_file():
                        raise FileNotFoundError(f"{pairs_file}:{lineno}: image {path} not found")
                    raise ValueError(f"{pairs_file}:{lineno}: image {key} has no landmarks in {lmk_file}")
                ends.append(index[(race, key)])
            rows.append((ends[0], ends[1], same, race, int(fold)))
    pair_list = PairList.from_rows(rows)
    pair_list.check(str(txts))
    images = ImageSet(sources, np.stack(landmarks), root=test, names=names)
    return EvalSet("rfw", images, pair_list, np.array(identities, dtype=object),
                   np.array(image_groups, dtype=object), notes=notes)
