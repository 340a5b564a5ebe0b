"""`creagen --version`, and the quiet-by-default Ray logging that --verbose undoes."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from creagen_ray import __version__
from creagen_ray.console import LEVEL_ENV, configure, ray_log_level


def test_version_flag() -> None:
    """The console script prints the package, Ray and torch versions and exits 0."""
    exe = Path(sys.executable).with_name("creagen")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(f"creagen-ray {__version__} (ray 2.60")


def test_verbose_flag_controls_ray_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quiet: the ray loggers and the level handed to Ray's workers are WARNING; --verbose: INFO."""
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    old = logging.getLogger("ray").level
    try:
        configure(verbose=False)
        assert ray_log_level() == "WARNING" and not logging.getLogger("ray.train").isEnabledFor(logging.INFO)
        configure(verbose=True)
        assert ray_log_level() == "INFO" and logging.getLogger("ray.train").isEnabledFor(logging.INFO)
    finally:
        logging.getLogger("ray").setLevel(old)
