"""What every test set is made of: its images (:class:`ImageSet`), its pair list (:class:`PairList`), the set itself
(:class:`EvalSet`), and the CSV and image-header helpers the loaders share.

What a set knows about itself is decided when it is loaded, from the files:
images without landmarks have their size read from their headers then, so the
report's "resized without alignment" note is part of the loaded set (and of a
cache hit) rather than something learnt while embedding.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fpr_plugin.face_input import IMAGE_SIZE
from fpr_plugin.text_files import open_text

#: EXIF orientations that turn the picture by 90 degrees (the decoder swaps width and height)
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def _header_size(source: bytes | Path) -> tuple[int, int] | None:
    """``(height, width)`` of the decoded image, read from its header (EXIF orientation applied); None when the
    header cannot be read (the image is then decoded to find out)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any header PIL cannot parse: let the decoder decide
        return None
    return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)


def resize_note(sizes: Sequence[tuple[int, int]]) -> str:
    """The report's note for images of these ``(height, width)`` sizes resized to 112x112."""
    listed = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
    return f"images of size {listed} were resized to {IMAGE_SIZE}x{IMAGE_SIZE} without alignment"


# --------------------------------------------------------------------------- containers
@dataclass
class ImageSet:
    """The unique images of a test set: file paths or encoded bytes, optional 5-point landmarks ``[N, 5, 2]``.

    Images with landmarks are aligned with insightface's ``norm_crop``; images
    without are expected aligned and are resized to 112x112 if they are not
    (``resized_from``: the ``(height, width)`` sizes that will be, read from
    the headers when the set is made). With ``aligned`` every image must already
    be 112x112 (insightface ``.bin`` files).
    """

    sources: list
    landmarks: np.ndarray | None = None
    root: Path | None = None
    names: list[str] | None = None  # human-readable name per image for errors (defaults to the path)
    aligned: bool = False
    resized_from: frozenset = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
            if self.landmarks.shape != (len(self.sources), 5, 2):
                raise ValueError(f"landmarks must have shape ({len(self.sources)}, 5, 2), "
                                 f"got {self.landmarks.shape}")
        else:
            self.resized_from = frozenset(self._scan_sizes())

    def __len__(self) -> int:
        return len(self.sources)

    def name(self, index: int) -> str:
        """The image's name in messages: its path, or its place in the file it came from."""
        if self.names is not None:
            return self.names[index]
        src = self.sources[index]
        return str(src) if not isinstance(src, bytes) else f"image #{index}"

    def _scan_sizes(self) -> set[tuple[int, int]]:
        """Every image's size from its header: the sizes other than 112x112 (refused when ``aligned``)."""
        sizes = set()
        for index, src in enumerate(self.sources):
            if not isinstance(src, bytes) and not Path(src).is_file():
                raise FileNotFoundError(f"image not found: {src}")
            size = _header_size(src)
            if size is None:
                size = self._decode(index).shape[:2]
            if size != (IMAGE_SIZE, IMAGE_SIZE):
                if self.aligned:
                    raise ValueError(self._not_aligned(index, size))
                sizes.add(tuple(size))
        return sizes

    def _not_aligned(self, index: int, size: tuple[int, int]) -> str:
        return (f"{self.name(index)} is {size[1]}x{size[0]}; expected an aligned {IMAGE_SIZE}x{IMAGE_SIZE} face "
                "(insightface .bin files hold aligned faces)")

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

    def _decode(self, index: int) -> np.ndarray:
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
        return img

    def _load_one(self, index: int) -> np.ndarray:
        import cv2

        img = self._decode(index)
        if self.landmarks is not None:
            from insightface.utils import face_align

            return face_align.norm_crop(img, self.landmarks[index], image_size=IMAGE_SIZE)
        size = img.shape[:2]
        if size != (IMAGE_SIZE, IMAGE_SIZE):
            if self.aligned:
                raise ValueError(self._not_aligned(index, size))
            if size not in self.resized_from:
                raise ValueError(f"{self.name(index)} decodes to {size[1]}x{size[0]}, a size its header did not "
                                 "give when the set was loaded; expected the file unchanged during the run")
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

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, int, bool, str, int]]) -> "PairList":
        """From ``(index1, index2, issame, group, fold)`` rows."""
        arr = np.array([(a, b) for a, b, *_ in rows], dtype=np.int64).reshape(-1, 2)
        return cls(arr, np.array([r[2] for r in rows], dtype=bool), np.array([r[3] for r in rows], dtype=object),
                   np.array([r[4] for r in rows], dtype=np.int64))


@dataclass
class EvalSet:
    """One test set: images, optional pair list, optional per-image identity/group for the dense protocol.

    ``notes`` are what the report says about the set (missing RFW races, images
    resized without alignment); they are fixed when the set is loaded.
    """

    name: str
    images: ImageSet
    pairs: PairList | None = None
    identities: np.ndarray | None = None
    image_groups: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.resized_from:
            note = resize_note(self.images.resized_from)
            if note not in self.notes:
                self.notes.append(note)

    def cache_key(self) -> str:
        """File-name-safe key of this set's image list (for the embedding cache)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)
        return f"{safe}-{self.images.key()}"


def fold_ids(n_pairs: int, n_folds: int, source: str) -> np.ndarray:
    """:func:`fpr_plugin.eval.metrics.consecutive_folds` for the pair list read from ``source`` (named on error)."""
    from fpr_plugin.eval.metrics import consecutive_folds

    if n_pairs < n_folds:
        raise ValueError(f"{source}: cannot cut {n_pairs} pairs into {n_folds} folds; expected at least "
                         f"{n_folds} pairs for the {n_folds}-fold protocol")
    return consecutive_folds(n_pairs, n_folds)


# --------------------------------------------------------------------------- CSV helpers (pair/dense CSVs, BFW)
def csv_header(path: Path) -> list[str]:
    """The first row of a CSV file (empty when the file is missing: the reader then names it)."""
    if not path.is_file():
        return []
    with open_text(path, "a comma-separated table with a header row") as handle:
        return next(csv.reader(handle), [])


def read_csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of every data row; the header must hold ``required``, every row every column."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open_text(path, f"a comma-separated table with the columns {list(required)}") as handle:
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


def parse_flag(value: str, path: Path, lineno: int, column: str) -> bool:
    """A same-person column: 1/0, true/false or yes/no."""
    text = value.strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{path}:{lineno}: column {column!r} must be 1/0 (or true/false), got {value!r}")


class ImageIndex:
    """Unique image paths of a table (first-seen order), each checked to exist once.

    A path in the table is relative to ``root``, or absolute.
    """

    def __init__(self, root: Path, table: Path):
        self.root, self.table = root, table
        self.index: dict[str, int] = {}
        self.paths: list[Path] = []

    def get(self, rel: str, lineno: int) -> int:
        """The index of the image at ``rel`` (line ``lineno`` of the table names it when it is missing)."""
        rel = rel.strip()
        if rel not in self.index:
            path = self.root / rel  # an absolute rel stays as it is
            if not path.is_file():
                raise FileNotFoundError(f"{self.table}:{lineno}: image {path} not found")
            self.index[rel] = len(self.paths)
            self.paths.append(path)
        return self.index[rel]
