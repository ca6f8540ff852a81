"""The typing contract of ``pipelines/``, ``lime_model/`` and ``jobs/``: mypy passes with the settings of
pyproject's ``[tool.mypy]``, and no ``type: ignore`` comment silences it.

Slow (a cold mypy run takes ~12 s on the 2-core machine, ~1 s with its cache), so ``make test-fast``
leaves it to ``make lint`` and CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "lime_model", "jobs")

pytestmark = pytest.mark.slow


def test_mypy_reports_no_error() -> None:
    # no file arguments: mypy checks the files of [tool.mypy], with its settings
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_type_ignore_comment() -> None:
    result = subprocess.run(["grep", "-rn", "--include=*.py", "type: ignore", *PACKAGES], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr  # grep: 1 = no line matched, 2 = error
