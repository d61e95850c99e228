"""Packaging: the recipes ship inside the wheel, and a non-editable install finds them (no walking up)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (so the checkout gets no build/ folder)."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("fpr_plugin", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(out), str(src)], capture_output=True, text=True)
    if run.returncode != 0 and "No module named pip" in run.stderr:
        pytest.skip("pip is not installed in this environment")
    assert run.returncode == 0, run.stderr
    (path,) = out.glob("fpr_plugin-*.whl")
    return path


def test_the_wheel_holds_every_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in REPO.glob("recipes/*.py"):
        assert f"fpr_plugin/recipes/{recipe.name}" in names, recipe.name
    assert not any(n.startswith("recipes/") for n in names)  # under the package, not a top-level package


def test_an_unpacked_wheel_loads_its_shipped_recipes(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import fpr_plugin; from fpr_plugin.train.config import load_config, recipes_dir; "
            "from fpr_plugin.demo import default_recipe; "
            "print(fpr_plugin.__file__); print(recipes_dir()); print(default_recipe()); "
            "print(load_config('bupt_globalface_r50').lr_steps)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    package, recipes, demo, steps = run.stdout.splitlines()
    assert Path(package).parent == site / "fpr_plugin"  # the unpacked copy, not the checkout
    assert Path(recipes) == site / "fpr_plugin" / "recipes" and Path(demo).parent == Path(recipes)
    assert steps == "[10, 18, 22]"
