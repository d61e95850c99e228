"""BFW (Balanced Faces in the Wild): ``bfw-v0.1.5-datatable.csv`` and its face images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpr_plugin.eval.sets.base import EvalSet, ImageIndex, ImageSet, PairList, parse_flag, read_csv_rows

BFW_CSV_NAME = "bfw-v0.1.5-datatable.csv"
_REQUIRED = ["fold", "p1", "p2", "label", "id1", "id2", "a1", "a2"]


def find_bfw_table(path: str | Path) -> Path:
    """The BFW datatable: ``path`` itself, or ``bfw-v0.1.5-datatable.csv`` in it or up to two levels below."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for pattern in (BFW_CSV_NAME, f"*/{BFW_CSV_NAME}", f"*/*/{BFW_CSV_NAME}", "bfw*datatable*.csv",
                        "*/bfw*datatable*.csv"):
            hits = sorted(path.glob(pattern))
            if hits:
                return hits[0]
    raise FileNotFoundError(f"{path}: no BFW datatable ({BFW_CSV_NAME}) found")


def _image_root(table: Path, given: Path) -> Path:
    """The first of the table's folder, the given folder and ``bfw-cropped-aligned/``/``bfw/`` below them that
    holds the table's first image."""
    first = next(read_csv_rows(table, _REQUIRED), None)
    if first is None:
        raise ValueError(f"{table}: no pairs")
    bases = [table.parent, given if given.is_dir() else table.parent]
    candidates = [c for b in bases for c in (b, b / "bfw-cropped-aligned", b / "bfw")]
    root = next((c for c in candidates if (c / first[1]["p1"].strip()).is_file()), None)
    if root is None:
        raise FileNotFoundError(f"{table}:{first[0]}: image {first[1]['p1']!r} not found under any of "
                                f"{[str(c) for c in dict.fromkeys(candidates)]}")
    return root


def load_bfw(path: str | Path, image_root: str | Path | None = None) -> EvalSet:
    """BFW: ``bfw-v0.1.5-datatable.csv`` (fold 1-5, p1, p2, label, id1, id2, a1, a2, ...) and its face images.

    Group of a pair = its subgroup (``a1``, e.g. ``AF``; ``a1/a2`` if they differ);
    the 5 folds of the table are the accuracy folds; every image (identity ``id``,
    group ``a``) enters the dense protocol. The image root is ``image_root`` or the
    first of the table's folder, the given folder and ``bfw-cropped-aligned/``
    below them that holds the first image.
    """
    given = Path(path)
    table = find_bfw_table(given)
    root = Path(image_root) if image_root is not None else _image_root(table, given)
    index = ImageIndex(root, table)
    identities: dict[int, str] = {}
    image_groups: dict[int, str] = {}
    rows = []
    for lineno, row in read_csv_rows(table, _REQUIRED):
        a, b = index.get(row["p1"], lineno), index.get(row["p2"], lineno)
        try:
            fold = int(row["fold"])
        except ValueError:
            raise ValueError(f"{table}:{lineno}: column 'fold' must be an integer, got {row['fold']!r}") from None
        same = parse_flag(row["label"], table, lineno, "label")
        for img, ident, grp in ((a, row["id1"], row["a1"]), (b, row["id2"], row["a2"])):
            identities.setdefault(img, ident.strip())
            image_groups.setdefault(img, grp.strip())
        g1, g2 = row["a1"].strip(), row["a2"].strip()
        rows.append((a, b, same, g1 if g1 == g2 else f"{g1}/{g2}", fold))
    if not rows:
        raise ValueError(f"{table}: no pairs")
    pairs = PairList.from_rows(rows)
    pairs.check(str(table))
    n = len(index.paths)
    return EvalSet("bfw", ImageSet(index.paths, root=root), pairs,
                   np.array([identities[i] for i in range(n)], dtype=object),
                   np.array([image_groups[i] for i in range(n)], dtype=object))
