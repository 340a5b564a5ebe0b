"""`creagen --version`, and the quiet-by-default Ray logging that --verbose undoes.

`--verbose` bringing Ray's own lines back on a real command is checked on the `creagen demo --verbose` of
tests/test_shutdown.py (its own private Ray); the quiet default console of a private Ray beside others on that
test's `creagen train`, and of a run joining a cluster on the shipped sentence-vae run:
tests/test_shipped_configs.py::test_train_console_is_quiet_on_a_cluster."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from creagen_ray import __version__
from creagen_ray.console import LEVEL_ENV, QUIET_LOGGERS, configure, quiet, ray_log_level, train_log_level


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
        assert quiet() and train_log_level() == "WARNING"  # Ray Train's RunConfig logging_config; no log_to_driver
        assert not logging.getLogger(QUIET_LOGGERS[0]).isEnabledFor(logging.WARNING)
        configure(verbose=True)
        assert ray_log_level() == "INFO" and logging.getLogger("ray.train").isEnabledFor(logging.INFO)
        assert not quiet() and train_log_level() == "INFO"
        assert logging.getLogger(QUIET_LOGGERS[0]).isEnabledFor(logging.WARNING)
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
    assert "unset: the model's default" in gen and "range 0.0 <= x <= 10.0 --top-k" in gen  # --temperature, from TextRequest's Field
    assert "range 1 <= x <= 2048 (default: 200)" in gen and "1e-06 <= x <= 1.0" in gen


def test_progress_display_bar_on_a_terminal_lines_otherwise(tmp_path: Path) -> None:
    """The driver's display of the controller's reports: one tqdm bar (step/total, loss, val, rate, ETA) on a
    TTY; one plain line per report on a pipe; a failure line shows in both."""
    import io
    import json

    from creagen_ray.training.progress import ProgressDisplay

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    events = [
        {"line": "[run] step 2/4 (50%)  loss 2.0000", "step": 2, "total": 4, "postfix": "loss 2.0000  val_loss 2.1000  900 tokens/s"},
        {"line": "[run] worker 1 failed: RuntimeError: boom"},
        {"line": "[run] step 4/4 (100%)  loss 1.0000", "step": 4, "total": 4, "postfix": "loss 1.0000  val_loss 1.5000  950 tokens/s"},
    ]
    for stream in (Tty(), io.StringIO()):
        with ProgressDisplay("run", stream=stream, poll_s=0.01) as display:
            with open(display.path, "a", encoding="utf-8") as f:
                for e in events:
                    f.write(json.dumps(e) + "\n")
        text = stream.getvalue()
        assert "worker 1 failed: RuntimeError: boom" in text
        if isinstance(stream, Tty):
            assert "\r" in text and "4/4" in text and "val_loss 1.5000" in text and "step 2/4 (50%)" not in text
            assert "<" in text  # tqdm's elapsed<remaining (ETA)
        else:
            assert text.splitlines() == [e["line"] for e in events]
        assert not Path(display.path).exists()
