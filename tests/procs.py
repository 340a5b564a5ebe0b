"""Process helpers shared by the tests that start their own `ray start` clusters."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop `ray start --block` and everything in *its* process group (never `ray stop`: other users' Ray).

    SIGTERM to the whole group at once (each Ray process exits in parallel, rather than one after
    another as `ray start --block` stops them), SIGKILL to whatever is left after `grace_s`.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so an exited group reads as gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def free_port() -> int:
    """A TCP port nobody on 127.0.0.1 listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(tmp: Path, env: dict[str, str], num_cpus: int = 4, timeout_s: float = 120) -> Iterator[str]:
    """`ray start --head --block` (no dashboard, no log monitor) with TMPDIR=`tmp`; yields its address once up.

    A command run with the same TMPDIR joins it as after `ray start` (<tmp>/ray/ray_current_cluster);
    its Ray processes get `env` (e.g. the S3 credentials, as a node's IAM role would). Stopped with
    stop_group (never `ray stop`: other users' Ray). The log monitor only streams workers' output to
    drivers that ask for it (`creagen --verbose`; none here), and cost about 2.5 CPU-seconds a start.
    """
    env = {**env, "TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--num-cpus={num_cpus}",
         "--include-dashboard=false", "--include-log-monitor=false", "--port=0", f"--ray-client-server-port={free_port()}",
         f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
         "--object-store-memory=300000000", "--disable-usage-stats"],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    record = tmp / "ray" / "ray_current_cluster"
    try:
        deadline = time.monotonic() + timeout_s
        while not (record.is_file() and record.read_text().strip()):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up (exit {head.poll()})")
            time.sleep(0.2)
        yield record.read_text().strip()
    finally:
        stop_group(head)
