"""Face image folder trees (BUPT layout): ``<group>/<identity>/<image>`` or ``<identity>/<image>``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "scan_image_folder"]


@dataclass(frozen=True)
class ImageFolder:
    """Images of a folder tree with class ids 0..C-1 (identities sorted by group, then name)."""

    root: Path
    images: list[tuple[Path, int]]  # (path, class id), sorted by class id, then file name
    identities: list[tuple[str, str]]  # class id -> (identity, group); group "" without groups

    @property
    def num_classes(self) -> int:
        """Number of identities."""
        return len(self.identities)

    def groups(self) -> dict[int, tuple[str, str]]:
        """Class id -> (identity, group), the form ``write_record_set(groups=...)`` takes."""
        return dict(enumerate(self.identities))


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def scan_image_folder(root: str | os.PathLike) -> ImageFolder:
    """Find identities and images under ``root``; with two folder levels the first is the group.

    Identity folders without images are left out (they would be classes with no sample).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    top = _subdirs(root)
    if not top:
        raise ValueError(f"{root}: expected identity folders (<identity>/<image>) or group folders "
                         "(<group>/<identity>/<image>), found no sub-folders")
    grouped = any(_subdirs(d) for d in top)
    pairs: list[tuple[Path, str, str]] = []  # (identity folder, identity, group)
    for d in top:
        if grouped:
            if _images(d):
                raise ValueError(f"{d}: mixed layout, this group folder holds images directly; expected "
                                 "<group>/<identity>/<image> everywhere (or <identity>/<image> everywhere)")
            pairs.extend((i, i.name, d.name) for i in _subdirs(d))
        else:
            pairs.append((d, d.name, ""))
    images: list[tuple[Path, int]] = []
    identities: list[tuple[str, str]] = []
    for folder, identity, group in pairs:
        files = _images(folder)
        if not files:
            continue
        class_id = len(identities)
        identities.append((identity, group))
        images.extend((f, class_id) for f in files)
    if not images:
        raise ValueError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in any identity folder")
    return ImageFolder(root=root, images=images, identities=identities)
