"""What `creagen` prints: its own progress, not Ray's internals (unless --verbose).

    configure(verbose=False)   # before Ray starts: Ray's INFO lines and known-harmless warnings hidden

Quiet (the default): the `ray` loggers in this process show WARNING and above, the Ray runtime
that `connect_ray` starts passes the same level to every worker and actor
(`ray.LoggingConfig`, read from CREAGEN_RAY_LOG_LEVEL), and Ray's DeprecationWarning /
FutureWarning are ignored. Verbose: Ray's INFO lines and every warning come back.
"""

from __future__ import annotations

import logging
import os
import warnings

LEVEL_ENV = "CREAGEN_RAY_LOG_LEVEL"
# Warnings Ray prints on every local start that ask nothing of the user (hidden unless --verbose).
KNOWN_HARMLESS = ("Token authentication is enabled for this Ray cluster",)


class _DropKnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(k in msg for k in KNOWN_HARMLESS)


def configure(verbose: bool) -> None:
    """Set Ray's console verbosity for this process and the Ray runtime it will start."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # no duplicated worker prints
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    level = "INFO" if verbose else "WARNING"
    os.environ[LEVEL_ENV] = level
    os.environ["RAY_DATA_LOG_LEVEL"] = level  # Ray Data configures its own "ray.data" logger on import
    logging.getLogger("ray").setLevel(level)
    if not verbose:
        for handler in logging.getLogger("ray").handlers:  # handler filters see the child loggers' records
            if not any(isinstance(f, _DropKnownHarmless) for f in handler.filters):
                handler.addFilter(_DropKnownHarmless())
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"ray(\.|$)")


def ray_log_level() -> str:
    """The level connect_ray hands to Ray's workers (INFO when creagen's CLI did not set one)."""
    return os.environ.get(LEVEL_ENV, "INFO")
