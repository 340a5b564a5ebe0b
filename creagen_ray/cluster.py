"""Joining Ray: the one place that decides which cluster a command runs on (no family, no data)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ray

from creagen_ray.console import private_runtime_env, quiet, ray_log_level, reapply_after_import


def connect_ray(address: str | None = None, private_env: dict[str, str] | None = None) -> bool:
    """Join Ray: `address` when given; else a running cluster; else a private local one.

    "A running cluster" is RAY_ADDRESS (set inside Ray Jobs) or the cluster `ray start` recorded
    in <tmp>/ray/ray_current_cluster (then address="auto"). A bare "auto" would also latch onto any
    Ray process found by scanning `ps` (e.g. another user's test session), so it is not tried
    otherwise. `address="local"` always starts a private runtime (the demo uses that). Never
    re-initializes when Ray is already up; a local runtime has no dashboard (about 0.9 GB less).
    `private_env` is set in this process's environment just before a private runtime starts, so
    every Ray process inherits it (Serve's data-plane flags); a joined cluster keeps its own.
    Returns True when it started that private runtime (ray.shutdown() then ends all of it).
    """
    if ray.is_initialized():
        return False
    reapply_after_import()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log_to_driver = not quiet()  # creagen --verbose: workers' output streamed here (console.py)
    if address and address != "local":
        ray.init(address=address, log_to_driver=log_to_driver)
        return False
    if address is None:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=log_to_driver)
            return False
        if (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").is_file():
            try:
                ray.init(address="auto", log_to_driver=log_to_driver)
                return False
            except ConnectionError:  # a stale record of a stopped cluster
                pass
    os.environ.update(private_env or {})
    package_root = str(Path(__file__).resolve().parents[1])  # workers import creagen_ray from here too
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    # The private runtime's processes are this one's children: they inherit its environment, so the
    # variables go there, not into a job runtime_env (which routes every worker through Ray's
    # setup_worker, about 0.5 s of CPU more per worker, and leaves the prestarted workers unused).
    os.environ.update(private_runtime_env(pythonpath))
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=log_to_driver,
        logging_config=ray.LoggingConfig(log_level=ray_log_level()),  # creagen --verbose: INFO, else WARNING
    )
    return True
