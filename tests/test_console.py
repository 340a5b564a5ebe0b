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


def test_every_subcommand_help_has_description_example_and_ranges() -> None:
    """--help of each subcommand: a description, an example; generate's sampling flags show their ranges."""
    from creagen_ray.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description and "example:\n  creagen " + name in text, name
    gen = sub.choices["generate"].format_help().replace("\n", " ")
    gen = " ".join(gen.split())
    assert "range 0.0 <= x <= 10.0 (default: 1.0)" in gen  # --temperature, from TextRequest's Field
    assert "range 1 <= x <= 2048 (default: 200)" in gen and "1e-06 <= x <= 1.0" in gen
