"""Synthetic face-like images: identities drawn from a latent code, rendered as photos with 5 landmarks.

Every identity is a latent code (face and feature geometry, skin, hair, eye and
lip colour); every photo of it adds its own pose (roll, scale, shift), yaw,
expression, blink, background, lighting gain and gradient, colour cast, blur and
sensor noise. The landmarks (eye centres, nose tip, mouth corners) are those of
the drawn face, near InsightFace's canonical 112x112 template after alignment,
and :func:`align_face` crops with insightface's ``norm_crop`` as real data is.
Groups (:class:`GroupSpec`) set the mean skin tone and how far identities spread.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from fpr_plugin.face_input import IMAGE_SIZE

#: InsightFace's canonical 5 landmarks of a 112x112 aligned face (arcface_dst).
CANONICAL_LANDMARKS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGNED_SIZE = IMAGE_SIZE  # fpr_plugin.face_input
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
    ``variation`` scales how much its photos of one person vary (yaw, roll,
    lighting gradient and sensor noise; 1 = the common amount).
    """

    name: str
    skin_tone: tuple[float, float, float]
    shape_spread: float = 1.0
    colour_spread: float = 1.0
    colour_mean: tuple[float, ...] = (0.0,) * len(COLOUR_ATTRIBUTES)
    train_weight: float = 1.0
    variation: float = 1.0


@dataclass(frozen=True)
class FaceIdentity:
    """One synthetic person: a name, a group and attribute values in (-1, 1)."""

    name: str
    group: str
    skin_tone: tuple[float, float, float]
    shape: tuple[float, ...]
    colour: tuple[float, ...]
    variation: float = 1.0  # GroupSpec.variation of its group

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
                        tuple(float(v) for v in shape), tuple(float(v) for v in colour), float(group.variation))


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


@functools.lru_cache(maxsize=4)
def _grid(side: int, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids ``(ys, xs)`` of a square image, ``index * scale + offset`` (read-only)."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) * np.float32(scale) + np.float32(offset)
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


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
    ys, xs = _grid(side, 1.0 / _SUPERSAMPLE, -_PAD)
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
    v = identity.variation  # x * 1.0 == x: the common amount draws the same bytes as before the option
    yaw = float(np.clip(rng.uniform(-0.7, 0.7) * v, -1.0, 1.0))
    layout = _face_layout(identity, yaw, mouth_open=float(rng.uniform(0, 1) ** 2),
                          blink=float(1.0 if rng.uniform() > 0.1 else rng.uniform(0.2, 0.6)))
    background = rng.uniform(40, 220, size=3)
    frontal = _draw_frontal(identity, layout, background)
    # similarity transform: face frame -> photo, including the supersampling of the drawing
    roll = np.deg2rad(rng.uniform(-12, 12) * v)
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
    ys, xs = _grid(size, 1.0 / size, -0.5)
    light = rng.uniform(0.75, 1.2) * (1 + rng.uniform(0, 0.5) * v * (xs * direction[0] + ys * direction[1]))
    photo = photo * light[..., None] + rng.uniform(-12, 12, size=3).astype(np.float32)
    sigma = rng.uniform(0.0, 1.0)
    if sigma > 0.3:
        photo = cv2.GaussianBlur(photo, (0, 0), sigma)
    photo = photo + rng.normal(0, rng.uniform(1.5, 6.0) * v, size=photo.shape).astype(np.float32)
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
