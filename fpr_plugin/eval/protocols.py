"""Test-set loaders: RFW (images or ``.bin``), insightface ``.bin``, BFW, generic pair and dense CSVs.

Every loader returns an :class:`EvalSet`: the unique images of the set
(:class:`ImageSet`, decoded and aligned to 112x112 BGR on demand), the pair list
with a group and a fold per pair (:class:`PairList`) and/or an identity and a
group per image for the dense protocol. Bad input fails early with the file and
line number.
"""
from __future__ import annotations

import csv
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from fpr_plugin.eval.metrics import consecutive_folds

RFW_RACES = ("African", "Asian", "Caucasian", "Indian")
BFW_CSV_NAME = "bfw-v0.1.5-datatable.csv"
IMAGE_SIZE = 112
_LANDMARK_COLUMNS = [f"{axis}{i}" for i in range(1, 6) for axis in ("x", "y")]


# --------------------------------------------------------------------------- containers
@dataclass
class ImageSet:
    """The unique images of a test set: file paths or encoded bytes, optional 5-point landmarks ``[N, 5, 2]``.

    Images with landmarks are aligned with insightface's ``norm_crop``; images
    without are expected aligned and are resized to 112x112 if they are not.
    """

    sources: list
    landmarks: np.ndarray | None = None
    root: Path | None = None
    names: list[str] | None = None  # human-readable name per image for errors (defaults to the path)
    aligned: bool = False  # True: every image must already be 112x112 (insightface .bin files)

    def __post_init__(self) -> None:
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
            if self.landmarks.shape != (len(self.sources), 5, 2):
                raise ValueError(f"landmarks must have shape ({len(self.sources)}, 5, 2), "
                                 f"got {self.landmarks.shape}")
        self.resized_from: set[tuple[int, int]] = set()

    def __len__(self) -> int:
        return len(self.sources)

    def name(self, index: int) -> str:
        if self.names is not None:
            return self.names[index]
        src = self.sources[index]
        return str(src) if not isinstance(src, bytes) else f"image #{index}"

    def key(self) -> str:
        """Content key of the image list: the bytes themselves, or each file's path (relative to ``root``
        when under it), size and modification time; and the landmarks. Changed images change the key."""
        digest = hashlib.sha256(b"v2")
        for src in self.sources:
            if isinstance(src, bytes):
                digest.update(hashlib.sha256(src).digest())
            else:
                path = Path(src)
                try:
                    rel = path.relative_to(self.root) if self.root is not None else path
                except ValueError:  # an absolute path outside the root
                    rel = path
                try:
                    info = path.stat()
                    stamp = f"{info.st_size}:{info.st_mtime_ns}"
                except OSError:
                    stamp = "missing"
                digest.update(rel.as_posix().encode() + b"\0" + stamp.encode() + b"\0")
        if self.landmarks is not None:
            digest.update(np.ascontiguousarray(self.landmarks).tobytes())
        return digest.hexdigest()[:16]

    def load(self, indices: Sequence[int]) -> np.ndarray:
        """Decode (and align) images: uint8 ``[B, 112, 112, 3]`` BGR."""
        out = np.empty((len(indices), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for row, index in enumerate(indices):
            out[row] = self._load_one(int(index))
        return out

    def _load_one(self, index: int) -> np.ndarray:
        import cv2

        src = self.sources[index]
        if isinstance(src, bytes):
            img = cv2.imdecode(np.frombuffer(src, dtype=np.uint8), cv2.IMREAD_COLOR)
        else:
            if not Path(src).is_file():
                raise FileNotFoundError(f"image not found: {src}")
            img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot decode image {self.name(index)}: not a JPEG/PNG file?")
        if self.landmarks is not None:
            from insightface.utils import face_align

            return face_align.norm_crop(img, self.landmarks[index], image_size=IMAGE_SIZE)
        if img.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            if self.aligned:
                raise ValueError(f"{self.name(index)} is {img.shape[1]}x{img.shape[0]}; expected an aligned "
                                 f"{IMAGE_SIZE}x{IMAGE_SIZE} face (insightface .bin files hold aligned faces)")
            self.resized_from.add(img.shape[:2])
            img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        return img


@dataclass
class PairList:
    """Verification pairs: image indices ``[P, 2]``, ``issame [P]``, group and fold per pair."""

    pairs: np.ndarray
    issame: np.ndarray
    groups: np.ndarray
    folds: np.ndarray

    def check(self, source: str) -> None:
        """Every group needs genuine and impostor pairs."""
        for name in dict.fromkeys(self.groups.tolist()):
            mask = self.groups == name
            n_gen, n_imp = int(self.issame[mask].sum()), int((~self.issame[mask]).sum())
            if n_gen == 0 or n_imp == 0:
                raise ValueError(f"{source}: group {name!r} has {n_gen} genuine and {n_imp} impostor pairs; "
                                 "each group needs both")


@dataclass
class EvalSet:
    """One test set: images, optional pair list, optional per-image identity/group for the dense protocol."""

    name: str
    images: ImageSet
    pairs: PairList | None = None
    identities: np.ndarray | None = None
    image_groups: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def cache_key(self) -> str:
        """File-name-safe key of this set's image list (for the embedding cache)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)
        return f"{safe}-{self.images.key()}"


def _pairs_from_rows(rows: list[tuple[int, int, bool, str, int]]) -> PairList:
    arr = np.array([(a, b) for a, b, *_ in rows], dtype=np.int64).reshape(-1, 2)
    return PairList(arr, np.array([r[2] for r in rows], dtype=bool),
                    np.array([r[3] for r in rows], dtype=object), np.array([r[4] for r in rows], dtype=np.int64))


# --------------------------------------------------------------------------- RFW, image layout
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
    with open(path, encoding="utf-8") as handle:
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
    with open(path, encoding="utf-8") as handle:
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


def _missing_races_note(where: Path, missing: Sequence[str], pattern: str) -> str:
    """The loud warning of an RFW folder without some races: printed, and kept in the report's notes."""
    import sys

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
    missing = [r for r in RFW_RACES if r not in chosen] if races is None else []
    notes = [_missing_races_note(txts, missing, "txts/<Race>/<Race>_pairs.txt")] if missing else []
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
        folds = consecutive_folds(len(pairs), n_folds)
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
    pair_list = _pairs_from_rows(rows)
    pair_list.check(str(txts))
    images = ImageSet(sources, np.stack(landmarks), root=test, names=names)
    return EvalSet("rfw", images, pair_list, np.array(identities, dtype=object),
                   np.array(image_groups, dtype=object), notes=notes)


# --------------------------------------------------------------------------- insightface .bin
class UnsafePickleError(ValueError):
    """A ``.bin`` file's pickle names a global outside the allow-list (nothing was executed)."""


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes for protocol < 3 as _codecs.encode(str, "latin1"); nothing else is allowed
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding={encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only bytes, str, lists, tuples, dicts, bools, ints, floats and numpy arrays.

    ``find_class`` allows the numpy array reconstructors and nothing else, so a
    crafted file cannot run code; any other global raises :class:`UnsafePickleError` naming it.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

    def __init__(self, file: Any, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source}: refusing to load global '{module}.{name}': a .bin verification "
                                "file may only hold image bytes, same-person flags and numpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing persistent id {pid!r}")


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """insightface ``.bin`` verification file -> ``(encoded images, issame [len/2])`` (restricted unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".bin file not found: {path}")
    with open(path, "rb") as handle:
        try:
            obj = RestrictedUnpickler(handle, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated / not a pickle
            raise ValueError(f"{path}: not a readable insightface .bin pickle ({type(exc).__name__}: {exc})") from None
    expected = "a pickled (list of encoded images, list of same-person flags)"
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected {expected}, got {type(obj).__name__}")
    bins, flags = obj
    images = []
    for i, item in enumerate(bins):
        if isinstance(item, (bytes, bytearray)):
            images.append(bytes(item))
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
            images.append(item.tobytes())
        else:
            raise ValueError(f"{path}: image {i} is {type(item).__name__}, expected encoded image bytes")
    issame = np.asarray(flags)
    binary = issame.dtype == bool or (issame.dtype.kind in "iu" and np.all((issame == 0) | (issame == 1)))
    if issame.ndim != 1 or not binary:
        raise ValueError(f"{path}: same-person flags must be a list of booleans, got {issame.dtype} {issame.shape}")
    if len(images) != 2 * issame.shape[0]:
        raise ValueError(f"{path}: {len(images)} images for {issame.shape[0]} pairs; expected 2 images per pair")
    return images, issame.astype(bool)


def load_bin(path: str | Path, group: str | None = None, n_folds: int = 10, name: str | None = None) -> EvalSet:
    """One ``.bin`` file: pairs ``(2i, 2i+1)``, folds = ``n_folds`` consecutive blocks, one group."""
    path = Path(path)
    images, issame = read_bin(path)
    group = group or path.stem
    n = issame.shape[0]
    pairs = PairList(np.arange(2 * n, dtype=np.int64).reshape(n, 2), issame,
                     np.array([group] * n, dtype=object), consecutive_folds(n, n_folds))
    pairs.check(str(path))
    image_set = ImageSet(images, names=[f"{path}, image #{i}" for i in range(len(images))], aligned=True)
    image_set.load([0])  # the first image's size, checked before any model runs
    return EvalSet(name or f"bin-{path.stem}", image_set, pairs)


def load_rfw_bin(directory: str | Path, races: Sequence[str] | None = None, n_folds: int = 10) -> EvalSet:
    """RFW as ``<Race>_test.bin`` files in one folder (aligned JPEGs), one group per race."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"RFW .bin folder not found: {directory}")
    races = list(races) if races is not None else [r for r in RFW_RACES if (directory / f"{r}_test.bin").is_file()]
    if not races:
        raise FileNotFoundError(f"{directory}: no <Race>_test.bin files (African, Asian, Caucasian, Indian)")
    sources, rows, names, notes = [], [], [], []
    missing = [r for r in RFW_RACES if r not in races]
    if missing:
        notes.append(_missing_races_note(directory, missing, "<Race>_test.bin"))
    for race in races:
        images, issame = read_bin(directory / f"{race}_test.bin")
        folds = consecutive_folds(issame.shape[0], n_folds)
        base = len(sources)
        sources.extend(images)
        names.extend(f"{directory / f'{race}_test.bin'}, image #{i}" for i in range(len(images)))
        rows.extend((base + 2 * i, base + 2 * i + 1, bool(same), race, int(fold))
                    for i, (same, fold) in enumerate(zip(issame, folds)))
    pairs = _pairs_from_rows(rows)
    pairs.check(str(directory))
    image_set = ImageSet(sources, names=names, aligned=True)
    image_set.load([0])
    return EvalSet("rfw-bin", image_set, pairs, notes=notes)


# --------------------------------------------------------------------------- CSV sets
def _read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected a header with {list(required)}, "
                             f"got {columns}")
        for row in reader:
            if None in row or any(row[c] is None for c in required):
                raise ValueError(f"{path}:{reader.line_num}: expected {len(columns)} comma-separated fields")
            yield reader.line_num, row


def _flag(value: str, path: Path, lineno: int, column: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{path}:{lineno}: column {column!r} must be 1/0 (or true/false), got {value!r}")


class _ImageIndex:
    """Unique image paths (first-seen order), each checked to exist once."""

    def __init__(self, root: Path, table: Path):
        self.root, self.table = root, table
        self.index: dict[str, int] = {}
        self.paths: list[Path] = []

    def get(self, rel: str, lineno: int) -> int:
        rel = rel.strip()
        if rel not in self.index:
            path = self.root / rel
            if not path.is_file():
                raise FileNotFoundError(f"{self.table}:{lineno}: image {path} not found")
            self.index[rel] = len(self.paths)
            self.paths.append(path)
        return self.index[rel]


def load_pairs_csv(path: str | Path, image_root: str | Path | None = None, n_folds: int = 10) -> EvalSet:
    """Generic pair list: header ``path1,path2,issame,group`` (or ``group1,group2``), optional ``fold``.

    Paths are relative to ``image_root`` (default: the CSV's folder) and point to
    aligned 112x112 faces. Without ``fold`` each group is cut into ``n_folds`` consecutive blocks.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, newline="", encoding="utf-8") if path.is_file() else io.StringIO("") as handle:
        header = next(csv.reader(handle), [])
    group_cols = ["group"] if "group" in header else ["group1", "group2"]
    index = _ImageIndex(root, path)
    rows, explicit_folds = [], "fold" in header
    for lineno, row in _read_csv(path, ["path1", "path2", "issame", *group_cols]):
        a, b = index.get(row["path1"], lineno), index.get(row["path2"], lineno)
        groups = [row[c].strip() for c in group_cols]
        group = groups[0] if len(set(groups)) == 1 else "/".join(groups)
        fold = -1
        if explicit_folds:
            try:
                fold = int(row["fold"])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: column 'fold' must be an integer, got {row['fold']!r}") from None
        rows.append((a, b, _flag(row["issame"], path, lineno, "issame"), group, fold))
    if not rows:
        raise ValueError(f"{path}: no pairs")
    pairs = _pairs_from_rows(rows)
    if not explicit_folds:
        for name in dict.fromkeys(pairs.groups.tolist()):
            mask = pairs.groups == name
            pairs.folds[mask] = consecutive_folds(int(mask.sum()), n_folds)
    pairs.check(str(path))
    return EvalSet(f"pairs-{path.stem}", ImageSet(index.paths, root=root), pairs)


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
    required = ["fold", "p1", "p2", "label", "id1", "id2", "a1", "a2"]
    if image_root is None:
        first = next(_read_csv(table, required), None)
        if first is None:
            raise ValueError(f"{table}: no pairs")
        bases = [table.parent, given if given.is_dir() else table.parent]
        candidates = [c for b in bases for c in (b, b / "bfw-cropped-aligned", b / "bfw")]
        root = next((c for c in candidates if (c / first[1]["p1"].strip()).is_file()), None)
        if root is None:
            raise FileNotFoundError(f"{table}:{first[0]}: image {first[1]['p1']!r} not found under any of "
                                    f"{[str(c) for c in dict.fromkeys(candidates)]}")
    else:
        root = Path(image_root)
    index = _ImageIndex(root, table)
    identities: dict[int, str] = {}
    image_groups: dict[int, str] = {}
    rows = []
    for lineno, row in _read_csv(table, required):
        a, b = index.get(row["p1"], lineno), index.get(row["p2"], lineno)
        try:
            fold = int(row["fold"])
        except ValueError:
            raise ValueError(f"{table}:{lineno}: column 'fold' must be an integer, got {row['fold']!r}") from None
        same = _flag(row["label"], table, lineno, "label")
        for img, ident, grp in ((a, row["id1"], row["a1"]), (b, row["id2"], row["a2"])):
            identities.setdefault(img, ident.strip())
            image_groups.setdefault(img, grp.strip())
        g1, g2 = row["a1"].strip(), row["a2"].strip()
        rows.append((a, b, same, g1 if g1 == g2 else f"{g1}/{g2}", fold))
    if not rows:
        raise ValueError(f"{table}: no pairs")
    pairs = _pairs_from_rows(rows)
    pairs.check(str(table))
    n = len(index.paths)
    return EvalSet("bfw", ImageSet(index.paths, root=root), pairs,
                   np.array([identities[i] for i in range(n)], dtype=object),
                   np.array([image_groups[i] for i in range(n)], dtype=object))


def load_dense_csv(path: str | Path) -> EvalSet:
    """Dense set: header ``path,identity,group`` (+ optional ``x1,y1,...,x5,y5`` landmarks), paths relative to
    the CSV's folder; images without landmarks must be aligned 112x112 faces."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") if path.is_file() else io.StringIO("") as handle:
        header = next(csv.reader(handle), [])
    has_landmarks = all(c in header for c in _LANDMARK_COLUMNS)
    required = ["path", "identity", "group"] + (_LANDMARK_COLUMNS if has_landmarks else [])
    index = _ImageIndex(path.parent, path)
    identities, groups, landmarks = [], [], []
    for lineno, row in _read_csv(path, required):
        before = len(index.paths)
        index.get(row["path"], lineno)
        if len(index.paths) == before:
            raise ValueError(f"{path}:{lineno}: image {row['path']!r} is listed twice")
        identities.append(row["identity"].strip())
        groups.append(row["group"].strip())
        if has_landmarks:
            try:
                landmarks.append([float(row[c]) for c in _LANDMARK_COLUMNS])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: landmark columns x1..y5 must be numbers") from None
    if not identities:
        raise ValueError(f"{path}: no images")
    lmk = np.array(landmarks, dtype=np.float32).reshape(-1, 5, 2) if has_landmarks else None
    return EvalSet(f"dense-{path.stem}", ImageSet(index.paths, lmk, root=path.parent), None,
                   np.array(identities, dtype=object), np.array(groups, dtype=object))
