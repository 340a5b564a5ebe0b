"""What `creagen` prints: its own progress, not Ray's internals (unless --verbose).

    configure(verbose=False)   # before Ray starts: Ray's INFO lines and known-harmless warnings hidden

Where each line of Ray's noise comes from, and what hides it (quiet is the default):
- the driver's own `ray.*` loggers: the `ray` logger at WARNING; the token-authentication notice
  (printed on every local start; the local runtime keeps auth on, nothing to do) and Ray Data's
  "Progress bars disabled" (creagen turns the bars off: its progress display replaces them) at
  ERROR; Ray's DeprecationWarning/FutureWarning ignored;
- Ray Train's own lines ("Requesting resources", "Started training worker group", "Setting up
  process group", "Moving model to device", "Checkpoint successfully created", ...) in the
  controller and workers: Ray Train's `RunConfig(logging_config=ray.train.LoggingConfig(...))`
  at WARNING (`train_log_level`);
- everything else the workers and actors write, streamed to the driver by Ray's log monitor
  (their Python warnings such as `ExecutionOptions.exclude_resources`, C++ core-worker lines such
  as the PreemptionWatcher "constructor arguments in the object store" ERROR, Train's
  placement-group cleaner polling a state API that a dashboard-less runtime lacks): not streamed
  (`ray.init(log_to_driver=False)`); it stays in the session's log files under
  <tmp>/ray/session_latest/logs. creagen's own progress comes from the driver
  (training/progress.py), and a worker's failure reaches the driver as the exception it raised.
`--verbose` sets none of this: every Ray line comes back.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

LEVEL_ENV = "CREAGEN_RAY_LOG_LEVEL"
# The driver's Python loggers whose WARNINGs ask nothing of the user; ERROR and above still show.
QUIET_LOGGERS = (
    "ray._private.authentication.authentication_token_setup",  # "Token authentication is enabled"
    "ray.data._internal.progress",  # "Progress bars disabled"
)


def configure(verbose: bool) -> None:
    """Set Ray's console verbosity for this process and the Ray runtime it will start."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # no duplicated worker prints
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    level = "INFO" if verbose else "WARNING"
    os.environ[LEVEL_ENV] = level
    os.environ["RAY_DATA_LOG_LEVEL"] = level  # Ray Data configures its own "ray.data" logger on import
    logging.getLogger("ray").setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not verbose:
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):  # RayDeprecationWarning too
            warnings.filterwarnings("ignore", category=category, module=r"ray(\.|$)")


def reapply_after_import() -> None:
    """`import ray` resets the `ray` logger to INFO: set the configured level again (connect_ray calls this)."""
    if LEVEL_ENV in os.environ:
        logging.getLogger("ray").setLevel(os.environ[LEVEL_ENV])


def ray_log_level() -> str:
    """The level connect_ray hands to Ray's workers (INFO when creagen's CLI did not set one)."""
    return os.environ.get(LEVEL_ENV, "INFO")


def quiet() -> bool:
    """True unless `creagen --verbose` (or a caller that never called configure) wants Ray's lines."""
    return ray_log_level() != "INFO"


def train_log_level() -> str:
    """The level for Ray Train's own `ray.train` lines (RunConfig's LoggingConfig)."""
    return ray_log_level()


def _closed_loopback_url() -> str:
    """An http URL on 127.0.0.1 with no server behind it (a port the OS just handed out and we freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def private_runtime_env(pythonpath: str) -> dict[str, str]:
    """Environment variables of a local runtime that creagen starts (no dashboard: about 0.9 GB less).

    RAY_API_SERVER_ADDRESS: Ray's state API client (Train's placement-group cleaner asks it whether
    the controller lives) would otherwise find "the" local Ray by scanning `ps`, and crash with
    "Found multiple active Ray instances" whenever another Ray runs on the machine (or, with one
    other instance, ask the wrong cluster). Pointed at this runtime's API server, which a runtime
    without the dashboard lacks, it fails with a warning instead (in the session's logs; the local
    runtime stops with the driver, so there is nothing for the cleaner to clean).
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: the runtime is this machine alone, which cannot be
    preempted without the driver; Ray Train's watcher (one more actor process per worker group,
    about 2 s of CPU each) would watch nothing. A value already set is kept.
    """
    return {
        "PYTHONPATH": pythonpath,
        "RAY_API_SERVER_ADDRESS": _closed_loopback_url(),
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    }
