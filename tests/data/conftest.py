"""Fixtures for the record-data tests: the mxnet 1.9.1 reference environment, small images.

mxnet does not import with numpy >= 1.24, so it lives in its own virtual environment and runs in
subprocesses. ``FPR_MXNET_PYTHON`` names an existing interpreter with mxnet; otherwise the
environment ``<repo>/.venv-mxnet`` is used, and created on first use
(``mxnet==1.9.1``, ``numpy<1.24``, ``opencv-python-headless<4.12`` for ``pack_img``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MXNET_VENV = REPO / ".venv-mxnet"
MXNET_REQUIREMENTS = ["mxnet==1.9.1", "numpy<1.24", "opencv-python-headless<4.12"]
_PROBE = "import mxnet, numpy; print(mxnet.__version__)\ntry:\n import cv2; print('cv2')\nexcept ImportError: print('no-cv2')"


@dataclass(frozen=True)
class MXNetEnv:
    """An interpreter that imports mxnet; ``has_cv2`` tells whether ``pack_img`` works there."""

    python: str
    version: str
    has_cv2: bool

    def run(self, script: str, workdir: Path, *args: str, timeout: float = 300) -> str:
        """Run ``script`` (a Python source) with this interpreter in ``workdir``; return its stdout."""
        path = workdir / "mx_script.py"
        path.write_text(textwrap.dedent(script), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.run([self.python, str(path), *args], cwd=workdir, capture_output=True,
                              text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"mxnet script failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc.stdout


def _probe(python: str) -> MXNetEnv | str:
    """The env behind ``python``, or why it cannot be used."""
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{python}: {err}"
    if proc.returncode != 0:
        return f"{python} cannot import mxnet: {proc.stderr.strip().splitlines()[-1:]}"
    lines = proc.stdout.split()
    return MXNetEnv(python=python, version=lines[0], has_cv2=lines[-1] == "cv2")


def _create_venv() -> MXNetEnv | str:
    """Create ``.venv-mxnet`` under a temporary name, install mxnet, rename; or say why not."""
    partial = MXNET_VENV.with_name(MXNET_VENV.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    steps = [[sys.executable, "-m", "venv", str(partial)],
             [str(partial / "bin" / "python"), "-m", "pip", "install", "-q", *MXNET_REQUIREMENTS]]
    try:
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                return f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-1500:]}"
        shutil.rmtree(MXNET_VENV, ignore_errors=True)
        os.replace(partial, MXNET_VENV)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"creating {MXNET_VENV} failed: {err}"
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return _probe(str(MXNET_VENV / "bin" / "python"))


@pytest.fixture(scope="session")
def mxnet_env() -> MXNetEnv:
    """The mxnet 1.9.1 reference interpreter (created if needed; skipped only if that fails)."""
    override = os.environ.get("FPR_MXNET_PYTHON")
    if override:
        env = _probe(override)
        if isinstance(env, str):
            pytest.fail(f"FPR_MXNET_PYTHON={override} is not a usable mxnet interpreter: {env}")
        return env
    local = MXNET_VENV / "bin" / "python"
    env = _probe(str(local)) if local.exists() else "missing"
    if isinstance(env, str) or not env.has_cv2:
        env = _create_venv()
    if isinstance(env, str):
        pytest.skip(f"the mxnet reference environment could not be created: {env}")
    return env


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator per test."""
    return np.random.default_rng(1234)


@pytest.fixture
def make_image(rng):
    """``make_image(size=112)``: a BGR uint8 image with smooth content (compresses like a photo)."""
    import cv2

    def make(size: int = 112) -> np.ndarray:
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)

    return make
