"""Process helpers shared by the tests that start their own `ray start` clusters."""

from __future__ import annotations

import os
import signal
import subprocess
import time


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
