"""Shared fixtures: one real local Ray cluster per test session, and the ../shared data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CREAGEN_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Set before Ray starts so every worker process sees them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster only
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray runtime (2 CPUs, no dashboard) shared by the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 2**20,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
        )
    yield ray
    ray.shutdown()


def _shared(rel: str) -> Path:
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"{p} is absent: this test needs the read-only ../shared/data corpus")
    return p


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """../shared/data/tinyshakespeare/input.txt (skips when absent)."""
    return _shared("tinyshakespeare/input.txt")


@pytest.fixture(scope="session")
def mnist_paths() -> tuple[Path, Path]:
    """The MNIST t10k images and labels idx files (skips when absent)."""
    return _shared("mnist/t10k-images-idx3-ubyte.gz"), _shared("mnist/t10k-labels-idx1-ubyte.gz")
