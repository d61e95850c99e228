"""Tests of fpr_plugin.data.synthetic_faces: identity sampling, rendered photos and their landmarks."""
from __future__ import annotations

import cv2
import numpy as np

from fpr_plugin.data import synthetic_faces as faces

GROUP = faces.GroupSpec("g", (120.0, 160.0, 200.0))


def _identity(seed: int) -> faces.FaceIdentity:
    return faces.sample_identity(np.random.default_rng(seed), GROUP, f"person{seed}")


def test_spread_controls_how_alike_identities_are():
    rng = np.random.default_rng(0)
    wide = faces.GroupSpec("wide", (100.0, 100.0, 100.0))
    narrow = faces.GroupSpec("narrow", (100.0, 100.0, 100.0), shape_spread=0.3, colour_spread=0.3)
    spread = {}
    for spec in (wide, narrow):
        codes = np.array([faces.sample_identity(rng, spec, "x").shape for _ in range(400)])
        spread[spec.name] = codes.std(axis=0).mean()
    # tanh(0.3 z) has std about 0.28, tanh(z) about 0.63
    assert spread["narrow"] < 0.35 < 0.55 < spread["wide"]


def test_render_is_deterministic_and_varies_per_image():
    identity = _identity(0)
    a, lm_a = faces.render_photo(identity, np.random.default_rng(1))
    b, lm_b = faces.render_photo(identity, np.random.default_rng(1))
    c, lm_c = faces.render_photo(identity, np.random.default_rng(2))
    assert a.shape == (faces.PHOTO_SIZE, faces.PHOTO_SIZE, 3) and a.dtype == np.uint8 and lm_a.shape == (5, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lm_a, lm_b)
    assert np.abs(a.astype(int) - c).mean() > 5 and np.abs(lm_a - lm_c).max() > 1


def _edges(img: np.ndarray) -> np.ndarray:
    gray = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 1.5)
    return np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))


def test_landmarks_register_the_face():
    """Aligning with each photo's own landmarks superimposes two photos of a person; the other's do not."""
    identity = _identity(3)
    wins = 0
    for k in range(6):
        a, lm_a = faces.render_photo(identity, np.random.default_rng([k, 0]))
        b, lm_b = faces.render_photo(identity, np.random.default_rng([k, 1]))
        own = np.abs(_edges(faces.align_face(a, lm_a)) - _edges(faces.align_face(b, lm_b))).mean()
        swapped = np.abs(_edges(faces.align_face(a, lm_b)) - _edges(faces.align_face(b, lm_b))).mean()
        wins += own < swapped
    assert wins == 6


def test_aligned_landmarks_sit_near_insightface_template():
    identity = _identity(11)
    photo, landmarks = faces.render_photo(identity, np.random.default_rng(9))
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, faces.CANONICAL_LANDMARKS.astype(np.float32))
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    # identity geometry and yaw move features by a few pixels, never by a feature's size
    assert np.abs(mapped - faces.CANONICAL_LANDMARKS).max() < 8
