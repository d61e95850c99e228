"""``fpr-build-rec``: a face image folder tree -> an InsightFace record set (no mxnet needed).

    fpr-build-rec SRC OUT [--landmarks FILE] [--workers N] [--quality 95] [--overwrite]
    fpr-build-rec --reindex RECORD_SET_OR_REC   # rebuild a missing or damaged .idx
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fpr_plugin.atomic import clean_interrupted
from fpr_plugin.cli_errors import UserError, add_debug_flag, run_cli
from fpr_plugin.text_files import read_text
from fpr_plugin.data.image_folder import scan_image_folder
from fpr_plugin.data.record_set import REC_NAME, record_paths, write_record_set
from fpr_plugin.data.recordio import rebuild_index
from fpr_plugin.face_input import IMAGE_SIZE

_JPEG_START = b"\xff\xd8"

__all__ = ["read_landmarks", "encode_face", "build_record_set", "main"]


def read_landmarks(path: str | os.PathLike, root: str | os.PathLike) -> dict[Path, np.ndarray]:
    """Read a 5-point landmark file: one ``image x1 y1 ... x5 y5`` line per image.

    Fields are separated by whitespace or commas; image paths are relative to ``root`` (or
    absolute); a first line whose coordinates are not numbers is a header; ``#`` starts a comment.
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file {path} does not exist")
    result: dict[Path, np.ndarray] = {}
    first_line = True
    text = read_text(path, "one 'image x1 y1 ... x5 y5' line per image", UserError)
    for number, line in enumerate(text.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.rsplit(",", 10) if "," in text else text.rsplit(None, 10)
        try:
            coords = np.array([float(f) for f in fields[1:]], dtype=np.float32)
        except ValueError:
            if first_line:
                first_line = False
                continue  # a header line
            raise ValueError(f"{path}, line {number}: expected an image path and 10 numbers "
                             f"(x1 y1 ... x5 y5), got {line!r}") from None
        first_line = False
        if len(fields) != 11:
            raise ValueError(f"{path}, line {number}: expected an image path and 10 numbers "
                             f"(x1 y1 ... x5 y5), got {len(fields) - 1} fields after the path")
        image = Path(fields[0].strip())
        result[(image if image.is_absolute() else root / image).resolve()] = coords.reshape(5, 2)
    return result


def encode_face(data: bytes, landmarks: np.ndarray | None = None,
                quality: int = 95) -> tuple[bytes, bool]:
    """One source image -> 112x112 JPEG bytes; returns ``(jpeg, resized)``.

    With landmarks the face is aligned with insightface's ``face_align.norm_crop``; an image
    already 112x112 in JPEG is kept byte for byte; any other size is resized (``resized`` True).
    Raises ValueError when the bytes are not a decodable image.
    """
    import cv2

    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not an image OpenCV can decode")
    resized = False
    if landmarks is not None:
        from insightface.utils.face_align import norm_crop

        img = norm_crop(img, np.asarray(landmarks, dtype=np.float32), image_size=IMAGE_SIZE)
    elif img.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        if data[:2] == _JPEG_START:
            return data, False
    else:
        img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        resized = True
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return buf.tobytes(), resized


@dataclass(frozen=True)
class _Task:
    path: Path
    landmarks: np.ndarray | None
    quality: int
    landmark_file: str | None  # set when every image must be aligned


def _run_task(task: _Task) -> tuple[bytes | None, str, bool]:
    """Worker: ``(jpeg, "", resized)`` or ``(None, reason, False)``."""
    if task.landmark_file is not None and task.landmarks is None:
        return None, f"no landmarks for this image in {task.landmark_file}", False
    try:
        jpeg, resized = encode_face(task.path.read_bytes(), task.landmarks, task.quality)
        return jpeg, "", resized
    except (OSError, ValueError) as err:
        return None, str(err) or type(err).__name__, False
    except Exception as err:  # e.g. cv2.error from alignment: report, keep building
        return None, f"{type(err).__name__}: {err}", False


def build_record_set(src: str | os.PathLike, out: str | os.PathLike, *,
                     landmarks: str | os.PathLike | None = None, workers: int = 2, quality: int = 95,
                     overwrite: bool = False, progress: bool = True) -> dict:
    """Build ``out`` (train.rec/.idx, property, groups.tsv) from the image tree ``src``.

    Unreadable images are reported on stderr and skipped (counted in the summary); identities
    left without images are dropped and the class ids renumbered to stay contiguous.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise UserError(f"--quality must be an integer in 1..100, got {quality!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError(f"--workers must be an integer >= 0 (0: encode in this process), got {workers!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder; expected a folder (or a new name) for the record set")
    clean_interrupted(out, "build")  # a replacement killed half-way: the old set back first
    if (out / REC_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a record set; pass --overwrite to replace it")
    folder = scan_image_folder(src)
    points = read_landmarks(landmarks, src) if landmarks is not None else {}
    landmark_file = str(landmarks) if landmarks is not None else None
    tasks = [_Task(path, points.get(path.resolve()), int(quality), landmark_file)
             for path, _ in folder.images]
    skipped: list[tuple[str, str]] = []
    groups: dict[int, tuple[str, str]] = {}  # filled while the samples stream, read after they end
    counts = {"resized": 0}

    def samples(results: Iterator) -> Iterator[tuple[int, bytes]]:
        new_class: dict[int, int] = {}  # source class id -> contiguous id among identities with images
        with tqdm(total=len(tasks), unit="img", desc="fpr-build-rec", disable=not progress) as bar:
            for (path, label), (jpeg, reason, resized) in zip(folder.images, results):
                bar.update(1)
                if jpeg is None:
                    skipped.append((str(path), reason))
                    tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)
                    continue
                counts["resized"] += resized
                if label not in new_class:
                    new_class[label] = len(new_class)
                    groups[new_class[label]] = folder.identities[label]
                yield new_class[label], jpeg

    def run(results: Iterator) -> dict:
        try:
            return write_record_set(out, samples(results), groups=groups)
        except ValueError as err:
            if str(err).startswith("no samples"):
                raise ValueError(f"{src}: no readable image ({len(skipped)} skipped); nothing was written") from None
            raise

    started = time.perf_counter()
    if workers > 0:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            summary = run(pool.imap(_run_task, tasks, chunksize=32))
    else:
        summary = run(map(_run_task, tasks))
    summary.update(source=str(src), skipped=len(skipped), skipped_files=skipped,
                   resized=counts["resized"], dropped_classes=folder.num_classes - summary["num_classes"],
                   seconds=round(time.perf_counter() - started, 2))
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpr-build-rec",
        description="Pack a face image tree (<group>/<identity>/<image> or <identity>/<image>) into an "
                    "InsightFace record set (train.rec, train.idx, property, groups.tsv).")
    p.add_argument("src", nargs="?", help="image folder tree")
    p.add_argument("out", nargs="?", help="output folder for the record set")
    p.add_argument("--landmarks", help="5-point landmark file (image x1 y1 ... x5 y5 per line); "
                                       "faces are aligned to 112x112 with insightface's norm_crop")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="encoding processes (0: encode in this process)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    p.add_argument("--overwrite", action="store_true", help="replace a record set already in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--reindex", metavar="RECORD_SET",
                   help="instead of building: rebuild the .idx of a record set folder or .rec file by scanning it")
    return add_debug_flag(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``fpr-build-rec``; returns the exit status (2: bad input, no traceback)."""
    return run_cli("fpr-build-rec", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.reindex:
        if args.src or args.out:
            parser.error("--reindex takes no SRC/OUT")
        rec, idx = record_paths(args.reindex)
        count = rebuild_index(rec, idx)
        print(f"rebuilt {idx}: {count} records")
        return 0
    if not args.src or not args.out:
        parser.error("SRC and OUT are required (or use --reindex)")
    summary = build_record_set(args.src, args.out, landmarks=args.landmarks, workers=args.workers,
                               quality=args.quality, overwrite=args.overwrite,
                               progress=not args.no_progress)
    shown = {k: v for k, v in summary.items() if k != "skipped_files"}
    print(json.dumps(shown, indent=2))
    if summary["resized"]:
        print(f"note: {summary['resized']} images were not 112x112 and were resized without alignment "
              "(pass --landmarks to align them)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
