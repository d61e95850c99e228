"""Fixtures for the evaluation tests (layout writers live in eval_fixtures.py)."""
import shutil

import pytest

from eval_fixtures import write_bfw, write_rfw


@pytest.fixture(scope="session")
def _rfw_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("rfw_template") / "RFW"
    return root, write_rfw(root)


@pytest.fixture
def rfw_dir(tmp_path, _rfw_template):
    """A fresh copy (tests may edit it) of a 2-race RFW folder: ``(root, info)``."""
    template, info = _rfw_template
    root = tmp_path / "RFW"
    shutil.copytree(template, root)
    return root, info


@pytest.fixture
def bfw_dir(tmp_path):
    root = tmp_path / "bfw"
    info = write_bfw(root)
    return root, info
