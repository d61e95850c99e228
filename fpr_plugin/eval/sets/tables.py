"""Generic CSV sets: a pair list (``path1,path2,issame,group[,fold]``) and a dense set
(``path,identity,group[,x1,y1..x5,y5]``). Image paths are relative to the CSV's folder, or absolute."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpr_plugin.eval.sets.base import (EvalSet, ImageIndex, ImageSet, PairList, csv_header, fold_ids, parse_flag,
                                       read_csv_rows)

LANDMARK_COLUMNS = [f"{axis}{i}" for i in range(1, 6) for axis in ("x", "y")]


def load_pairs_csv(path: str | Path, image_root: str | Path | None = None, n_folds: int = 10) -> EvalSet:
    """Generic pair list: header ``path1,path2,issame,group`` (or ``group1,group2``), optional ``fold``.

    Paths are absolute or relative to ``image_root`` (default: the CSV's folder) and
    point to aligned 112x112 faces. Without ``fold`` each group is cut into ``n_folds`` consecutive blocks.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    header = csv_header(path)
    group_cols = ["group"] if "group" in header else ["group1", "group2"]
    index = ImageIndex(root, path)
    rows, explicit_folds = [], "fold" in header
    for lineno, row in read_csv_rows(path, ["path1", "path2", "issame", *group_cols]):
        a, b = index.get(row["path1"], lineno), index.get(row["path2"], lineno)
        groups = [row[c].strip() for c in group_cols]
        group = groups[0] if len(set(groups)) == 1 else "/".join(groups)
        fold = -1
        if explicit_folds:
            try:
                fold = int(row["fold"])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: column 'fold' must be an integer, got {row['fold']!r}") from None
        rows.append((a, b, parse_flag(row["issame"], path, lineno, "issame"), group, fold))
    if not rows:
        raise ValueError(f"{path}: no pairs")
    pairs = PairList.from_rows(rows)
    if not explicit_folds:
        for name in dict.fromkeys(pairs.groups.tolist()):
            mask = pairs.groups == name
            pairs.folds[mask] = fold_ids(int(mask.sum()), n_folds, f"{path}, group {name!r}")
    pairs.check(str(path))
    return EvalSet(f"pairs-{path.stem}", ImageSet(index.paths, root=root), pairs)


def load_dense_csv(path: str | Path) -> EvalSet:
    """Dense set: header ``path,identity,group`` (+ optional ``x1,y1,...,x5,y5`` landmarks), paths absolute or
    relative to the CSV's folder; images without landmarks must be aligned 112x112 faces."""
    path = Path(path)
    header = csv_header(path)
    has_landmarks = all(c in header for c in LANDMARK_COLUMNS)
    required = ["path", "identity", "group"] + (LANDMARK_COLUMNS if has_landmarks else [])
    index = ImageIndex(path.parent, path)
    identities, groups, landmarks = [], [], []
    for lineno, row in read_csv_rows(path, required):
        before = len(index.paths)
        index.get(row["path"], lineno)
        if len(index.paths) == before:
            raise ValueError(f"{path}:{lineno}: image {row['path']!r} is listed twice")
        identities.append(row["identity"].strip())
        groups.append(row["group"].strip())
        if has_landmarks:
            try:
                landmarks.append([float(row[c]) for c in LANDMARK_COLUMNS])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: landmark columns x1..y5 must be numbers") from None
    if not identities:
        raise ValueError(f"{path}: no images")
    lmk = np.array(landmarks, dtype=np.float32).reshape(-1, 5, 2) if has_landmarks else None
    return EvalSet(f"dense-{path.stem}", ImageSet(index.paths, lmk, root=path.parent), None,
                   np.array(identities, dtype=object), np.array(groups, dtype=object))
