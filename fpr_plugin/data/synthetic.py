"""Synthetic demographic face benchmark: rendered faces, a training record set, RFW-layout and dense test sets.

No real face data can be downloaded on a fresh machine, so this module draws
face-like images. Every identity is a latent code (face and feature geometry,
skin, hair, eye and lip colour); every image of it adds its own pose, yaw,
expression, lighting, colour cast, blur, noise and JPEG quality. Images are
rendered as "photos" on a larger canvas with five landmarks (eye centres, nose
tip, mouth corners) and aligned with insightface's ``norm_crop``, as real data
is. Groups differ in how they are drawn and how often they occur in training
(see :data:`DESIGNS`), so that a margin-loss baseline ends up with unequal false
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
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

#: InsightFace's canonical 5 landmarks of a 112x112 aligned face (arcface_dst).
CANONICAL_LANDMARKS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGNED_SIZE = 112
PHOTO_SIZE = 160  # side of the unaligned RFW-layout photos
_SUPERSAMPLE = 2  # drawing resolution factor (anti-aliasing)
_PAD = 24  # margin (face-frame pixels) drawn around the 112x112 face frame

#: Identity attributes drawn from the latent code, each in (-1, 1) after tanh.
SHAPE_ATTRIBUTES = (
    "face_width", "face_height", "eye_spacing", "eye_height", "eye_size", "eye_openness",
    "brow_height", "brow_tilt", "brow_thickness", "nose_length", "nose_width",
    "mouth_width", "mouth_height", "lip_thickness", "hairline", "hair_volume", "ear_size",
)
COLOUR_ATTRIBUTES = ("skin_lightness", "skin_warmth", "hair_lightness", "hair_warmth", "iris_hue", "lip_redness")


@dataclass(frozen=True)
class GroupSpec:
    """One demographic group of the generator.

    ``skin_tone`` is the group's mean skin colour (BGR); ``shape_spread`` and
    ``colour_spread`` scale how far its identities' latent codes spread along the
    geometric and the colour attributes (smaller = identities look more alike);
    ``colour_mean`` shifts the colour attributes' latent mean (e.g. dark hair).
    ``train_weight`` scales the group's share of training identities.
    """

    name: str
    skin_tone: tuple[float, float, float]
    shape_spread: float = 1.0
    colour_spread: float = 1.0
    colour_mean: tuple[float, ...] = (0.0,) * len(COLOUR_ATTRIBUTES)
    train_weight: float = 1.0


@dataclass(frozen=True)
class SizeSpec:
    """How much data to draw: identities and images per group, pairs per fold."""

    train_identities: int  # per group of train_weight 1
    train_images: int  # per training identity
    test_identities: int  # per group (>= 20: two per fold)
    test_images: int  # per test identity (>= 2)
    pairs_per_fold: int  # genuine pairs per fold and group (as many impostor pairs)


_TONES = {"light": (170.0, 190.0, 225.0), "olive": (120.0, 160.0, 200.0),
          "tan": (100.0, 140.0, 185.0), "brown": (60.0, 90.0, 135.0)}
_DARK_HAIR = (0.0, 0.0, -1.5, 0.0, -1.0, 0.0)  # latent mean of COLOUR_ATTRIBUTES: dark hair, brown eyes

#: Group designs. ``rare``: the benchmark default; group ``Rare`` has a quarter of the
#: training identities of each other group and little colour variation (dark hair and
#: eyes, so its identities differ mainly in geometry). ``dense``: group ``Dense`` has
#: identities closer together in every attribute, equal training share. ``control``:
#: four groups that differ only in mean skin tone, equal shares (expected: no gap).
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
        GroupSpec("Dense", _TONES["brown"], shape_spread=0.55, colour_spread=0.55),
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
}


@dataclass(frozen=True)
class FaceIdentity:
    """One synthetic person: a name, a group and attribute values in (-1, 1)."""

    name: str
    group: str
    skin_tone: tuple[float, float, float]
    shape: tuple[float, ...]
    colour: tuple[float, ...]

    def attr(self, key: str) -> float:
        """The value in (-1, 1) of one named attribute."""
        if key in SHAPE_ATTRIBUTES:
            return self.shape[SHAPE_ATTRIBUTES.index(key)]
        return self.colour[COLOUR_ATTRIBUTES.index(key)]


def sample_identity(rng: np.random.Generator, group: GroupSpec, name: str) -> FaceIdentity:
    """Draw one identity of ``group``: latent ``z ~ N(mean, spread^2)``, attributes ``tanh(z)``."""
    shape = np.tanh(group.shape_spread * rng.standard_normal(len(SHAPE_ATTRIBUTES)))
    colour_mean = np.asarray(group.colour_mean, dtype=np.float64)
    colour = np.tanh(colour_mean + group.colour_spread * rng.standard_normal(len(COLOUR_ATTRIBUTES)))
    return FaceIdentity(name, group.name, tuple(group.skin_tone),
                        tuple(float(v) for v in shape), tuple(float(v) for v in colour))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

def _colours(identity: FaceIdentity) -> dict[str, np.ndarray]:
    """BGR colours of skin, hair, brows, iris and lips."""
    a = identity.attr
    skin = np.asarray(identity.skin_tone) + 28 * a("skin_lightness") + 12 * a("skin_warmth") * np.array([-1, 0, 1])
    hair_t = (a("hair_lightness") + 1) / 2
    hair = (1 - hair_t) * np.array([25, 28, 35]) + hair_t * np.array([110, 175, 215])
    hair = hair + (a("hair_warmth") + 1) / 2 * np.array([-15, -5, 30])  # towards red
    hue = (a("iris_hue") + 1) / 2  # brown -> green -> blue
    brown, green, blue = np.array([30, 60, 100]), np.array([80, 130, 70]), np.array([170, 120, 60])
    iris = (1 - 2 * hue) * brown + 2 * hue * green if hue < 0.5 else (2 - 2 * hue) * green + (2 * hue - 1) * blue
    lips = 0.75 * skin + np.array([0, 0, 40]) + a("lip_redness") * np.array([-12, -12, 30])
    return {"skin": np.clip(skin, 0, 255), "hair": np.clip(hair, 0, 255), "brow": np.clip(0.6 * hair, 0, 255),
            "iris": np.clip(iris, 0, 255), "lips": np.clip(lips, 0, 255)}


def _face_layout(identity: FaceIdentity, yaw: float, mouth_open: float, blink: float) -> dict:
    """Positions and sizes (face-frame pixels, 112x112 canonical frame) of the drawn parts."""
    a = identity.attr
    cx = 56.0 + 2.0 * yaw
    eye_y = 51.6 + 2.5 * a("eye_height")
    half_spacing = 17.6 + 2.5 * a("eye_spacing")
    mouth_y = 92.3 + 2.5 * a("mouth_height")
    half_mouth = 14.6 + 2.5 * a("mouth_width")
    eye_w = 6.0 + 1.4 * a("eye_size")
    return {
        "centre": (cx, 62.0),
        "axes": (34.0 + 4.0 * a("face_width"), 45.0 + 4.0 * a("face_height")),
        "eyes": [(56.0 - half_spacing + 3.5 * yaw, eye_y), (56.0 + half_spacing + 3.5 * yaw, eye_y)],
        "eye_w": eye_w,
        "eye_h": eye_w * (0.42 + 0.14 * a("eye_openness")) * blink,
        "brow_dy": 7.5 + 2.0 * a("brow_height"),
        "brow_tilt": 2.0 * a("brow_tilt"),
        "brow_thickness": 1.6 + 1.0 * a("brow_thickness"),
        "nose_tip": (56.0 + 5.5 * yaw, 71.7 + 3.0 * a("nose_length")),
        "nose_w": 4.5 + 1.8 * a("nose_width"),
        "mouth": [(56.0 - half_mouth + 3.5 * yaw, mouth_y), (56.0 + half_mouth + 3.5 * yaw, mouth_y)],
        "lip": 2.4 + 1.0 * a("lip_thickness"),
        "mouth_open": mouth_open,
        "hairline": 0.30 + 0.12 * a("hairline"),  # fraction of the face height covered by hair
        "hair_volume": 3.0 + 4.0 * (a("hair_volume") + 1),
        "ear": 5.0 + 1.5 * a("ear_size"),
    }


def _px(point: Sequence[float]) -> tuple[int, int]:
    """Face-frame point -> integer pixel of the supersampled drawing (with 4 fractional bits)."""
    scale = _SUPERSAMPLE * 16
    return (int(round((point[0] + _PAD) * scale)), int(round((point[1] + _PAD) * scale)))


def _len(value: float) -> int:
    return max(1, int(round(value * _SUPERSAMPLE * 16)))


def _ellipse(img, centre, axes, colour, angle=0.0, thickness=-1) -> None:
    cv2.ellipse(img, _px(centre), (_len(axes[0]), _len(axes[1])), angle, 0, 360,
                tuple(float(c) for c in colour), thickness, cv2.LINE_AA, 4)


def _draw_frontal(identity: FaceIdentity, layout: dict, background: np.ndarray) -> np.ndarray:
    """Draw the face in its canonical frame (supersampled, with a margin), BGR float32."""
    side = (ALIGNED_SIZE + 2 * _PAD) * _SUPERSAMPLE
    img = np.empty((side, side, 3), np.float32)
    img[:] = background
    col = _colours(identity)
    (cx, cy), (ax, ay) = layout["centre"], layout["axes"]
    eye_y = layout["eyes"][0][1]
    # hair volume behind the head, ears, then the face
    hv = layout["hair_volume"]
    _ellipse(img, (cx, cy - 6), (ax + hv, ay + hv * 0.6), col["hair"])
    for sign in (-1, 1):
        _ellipse(img, (cx + sign * (ax - 1.0), eye_y + 6), (layout["ear"] * 0.7, layout["ear"] * 1.4), 0.9 * col["skin"])
    _ellipse(img, (cx, cy), (ax, ay), col["skin"])
    # hair cap: the part of the head above a curved hairline
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / _SUPERSAMPLE - _PAD
    head = ((xs - cx) / (ax + 1.0)) ** 2 + ((ys - cy) / (ay + 1.0)) ** 2 <= 1.0
    hairline_y = cy - ay + 2 * ay * layout["hairline"] + 10.0 * ((xs - cx) / ax) ** 2
    img[head & (ys < hairline_y)] = col["hair"]
    # brows and eyes
    for i, (ex, ey) in enumerate(layout["eyes"]):
        sign = -1 if i == 0 else 1
        w, tilt = layout["eye_w"] * 1.3, layout["brow_tilt"] * sign
        by = ey - layout["brow_dy"]
        cv2.line(img, _px((ex - w, by + tilt)), _px((ex + w, by - tilt)), tuple(float(c) for c in col["brow"]),
                 _len(layout["brow_thickness"]) // 16, cv2.LINE_AA, 4)
        eh = max(layout["eye_h"], 0.4)
        _ellipse(img, (ex, ey), (layout["eye_w"], eh), (235, 238, 240))
        _ellipse(img, (ex, ey), (min(eh, layout["eye_w"] * 0.55),) * 2, col["iris"])
        _ellipse(img, (ex, ey), (min(eh, layout["eye_w"] * 0.55) * 0.45,) * 2, (15, 15, 15))
    # nose: bridge and nostrils
    (nx, ny), nw = layout["nose_tip"], layout["nose_w"]
    shade = tuple(float(c) for c in 0.75 * col["skin"])
    cv2.line(img, _px(((layout["eyes"][0][0] + layout["eyes"][1][0]) / 2, eye_y + 3)), _px((nx, ny - 1)), shade,
             max(1, _len(1.2) // 16), cv2.LINE_AA, 4)
    for sign in (-1, 1):
        _ellipse(img, (nx + sign * nw * 0.6, ny + 1.0), (nw * 0.35, nw * 0.22), 0.55 * col["skin"])
    # mouth: lips, opened by the expression
    (lx, ly), (rx, ry) = layout["mouth"]
    mid, half = ((lx + rx) / 2, (ly + ry) / 2), (rx - lx) / 2
    _ellipse(img, mid, (half, layout["lip"] * (1 + layout["mouth_open"])), col["lips"])
    if layout["mouth_open"] > 0.15:
        _ellipse(img, mid, (half * 0.7, layout["lip"] * layout["mouth_open"] * 0.8), (40, 30, 60))
    return img


def _landmarks(layout: dict) -> np.ndarray:
    """The 5 landmarks (eye centres, nose tip, mouth corners) of a layout, face frame, [5, 2]."""
    return np.array([*layout["eyes"], layout["nose_tip"], *layout["mouth"]], dtype=np.float64)


def render_photo(identity: FaceIdentity, rng: np.random.Generator, size: int = PHOTO_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Render one unaligned photo of ``identity``: ``(BGR uint8 [size, size, 3], landmarks [5, 2])``.

    ``rng`` supplies this image's nuisances: pose (roll, scale, shift), yaw,
    expression, blink, background, lighting gain and gradient, colour cast, blur
    and sensor noise.
    """
    yaw = float(rng.uniform(-0.7, 0.7))
    layout = _face_layout(identity, yaw, mouth_open=float(rng.uniform(0, 1) ** 2),
                          blink=float(1.0 if rng.uniform() > 0.1 else rng.uniform(0.2, 0.6)))
    background = rng.uniform(40, 220, size=3)
    frontal = _draw_frontal(identity, layout, background)
    # similarity transform: face frame -> photo, including the supersampling of the drawing
    roll = np.deg2rad(rng.uniform(-12, 12))
    scale = size / (ALIGNED_SIZE * 1.35) * rng.uniform(0.9, 1.1)
    shift = rng.uniform(-8, 8, size=2)
    rot = scale * np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    centre_frame, centre_photo = np.array([56.0, 62.0]), np.array([size / 2, size / 2]) + shift
    face_to_photo = np.hstack([rot, (centre_photo - rot @ centre_frame)[:, None]])
    draw_to_face = np.array([[1 / _SUPERSAMPLE, 0, -_PAD], [0, 1 / _SUPERSAMPLE, -_PAD], [0, 0, 1]])
    photo = cv2.warpAffine(frontal, face_to_photo @ draw_to_face, (size, size), flags=cv2.INTER_AREA,
                           borderMode=cv2.BORDER_REPLICATE)
    # lighting: gain, a directional gradient, colour cast; then optics and sensor
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    light = rng.uniform(0.75, 1.2) * (1 + rng.uniform(0, 0.5) * (xs * direction[0] + ys * direction[1]))
    photo = photo * light[..., None] + rng.uniform(-12, 12, size=3).astype(np.float32)
    sigma = rng.uniform(0.0, 1.0)
    if sigma > 0.3:
        photo = cv2.GaussianBlur(photo, (0, 0), sigma)
    photo = photo + rng.normal(0, rng.uniform(1.5, 6.0), size=photo.shape).astype(np.float32)
    landmarks = _landmarks(layout) @ face_to_photo[:, :2].T + face_to_photo[:, 2]
    return np.clip(photo, 0, 255).astype(np.uint8), landmarks.astype(np.float32)


def align_face(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Align a photo to the 112x112 InsightFace crop with insightface's ``norm_crop``."""
    from insightface.utils import face_align  # heavy import, only when images are made

    with warnings.catch_warnings():  # scikit-image deprecation inside insightface, not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(photo, np.asarray(landmarks, dtype=np.float32), image_size=ALIGNED_SIZE)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG")
    return buf.tobytes()


# ----------------------------------------------------------------------------------------------
# The benchmark: identities, images, pairs, and the three on-disk layouts
# ----------------------------------------------------------------------------------------------

FOLDS = 10
_TRAIN, _TEST = 0, 1  # stream ids of the per-image random generators


@dataclass(frozen=True)
class Benchmark:
    """The identities of one synthetic benchmark, before any image is drawn."""

    seed: int
    size: SizeSpec
    design: str
    groups: tuple[GroupSpec, ...]
    train: tuple[FaceIdentity, ...]  # index = class id
    test: tuple[FaceIdentity, ...]


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
    train, test = [], []
    for index, group in enumerate(groups):
        rng = np.random.default_rng([seed, 7, index])
        prefix = group.name.lower()
        train += [sample_identity(rng, group, f"{prefix}.train{i:04d}") for i in range(train_identity_count(size, group))]
        test += [sample_identity(rng, group, f"{prefix}.test{i:04d}") for i in range(size.test_identities)]
    return Benchmark(seed, size, design, groups, tuple(train), tuple(test))


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
                rng = _image_rng(bench.seed, _TEST, index, number)
                photo, landmarks = render_photo(identity, rng)
                data = encode_jpeg(photo, _jpeg_quality(rng))
                name = _image_name(identity.name, number)
                (folder / name).write_bytes(data)
                coords = "\t".join(f"{v:.3f}" for v in landmarks.reshape(-1))
                lmk_lines.append(f"./test/data/{group.name}/{identity.name}/{name}\t{label}\t{coords}\n")
                # the dense set holds what an aligner makes of the stored (JPEG) photo
                stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                relative = f"images/{group.name}/{identity.name}/{name}"
                (root / "dense" / relative).write_bytes(encode_jpeg(align_face(stored, landmarks), 95))
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
    with open(root / "dense" / "dense.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "group"])
        writer.writerows(dense_rows)
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
    """Generate a synthetic benchmark in ``out_dir`` (train record set, RFW layout, dense set).

    The folder is built under a temporary name beside ``out_dir`` and renamed when
    complete. An existing ``out_dir`` raises FileExistsError unless ``overwrite``.
    Returns the manifest also written to ``out_dir/synthetic.json``.
    """
    from fpr_plugin.data.record_set import write_record_set

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} already exists (pass overwrite=True / --overwrite to replace it)")
    bench = build_benchmark(seed, size, design)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        groups = {label: (ident.name, ident.group) for label, ident in enumerate(bench.train)}
        bar = _progress(len(bench.train) * bench.size.train_images, "train images", progress)
        record = write_record_set(tmp / "train", _counted(iter_train_samples(bench), bar),
                                  image_size=(ALIGNED_SIZE, ALIGNED_SIZE), groups=groups)
        bar.close()
        test_counts = _write_test_sets(bench, tmp, progress)
        manifest = {
            "seed": seed, "size": asdict(bench.size), "design": design,
            "groups": [asdict(g) for g in bench.groups],
            "train": {"num_classes": int(record["num_classes"]), "num_image": int(record["num_image"]),
                      "identities_per_group": {g.name: sum(i.group == g.name for i in bench.train) for g in bench.groups}},
            "test": test_counts,
            "paths": {"train": "train", "rfw": "rfw", "dense": "dense/dense.csv"},
        }
        (tmp / "synthetic.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``fpr-make-synthetic OUT [--seed S] [--size tiny|demo] [--design rare|dense|control]``."""
    parser = argparse.ArgumentParser(prog="fpr-make-synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything drawn (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo", help="amount of data (default demo)")
    parser.add_argument("--design", choices=sorted(DESIGNS), default="rare",
                        help="how the groups differ (default rare: one group rare in training)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        manifest = make_synthetic(args.output, seed=args.seed, size=args.size, design=args.design,
                                  overwrite=args.overwrite, progress=not args.quiet)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"fpr-make-synthetic: error: {error}\n")
    train = manifest["train"]
    print(f"wrote {args.output}: {train['num_classes']} training identities, {train['num_image']} images; "
          f"test groups {', '.join(manifest['test'])}")
    return 0
