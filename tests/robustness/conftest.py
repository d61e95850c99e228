"""Fixtures of the robustness corpus and the summary line it prints at the end of the run."""
from __future__ import annotations

import pytest

from robustness_assets import build_assets
from robustness_corpus import RESULTS


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """The valid inputs every case copies (built once)."""
    return build_assets(tmp_path_factory.mktemp("robustness_assets"))


def pytest_terminal_summary(terminalreporter):
    """One line with the corpus's size and result (the README's Reliability section quotes it)."""
    if RESULTS.tried or RESULTS.skipped:
        terminalreporter.write_line(RESULTS.summary())
