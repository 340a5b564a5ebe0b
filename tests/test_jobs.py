"""The training configs of jobs/configs/ validate as shipped (no Ray).

jobs/train.py as a real Ray Job (`ray job submit --working-dir . -- python jobs/train.py ...` from the
repo root, storage in S3) runs on the `ray start --head` cluster of tests/test_shipped_configs.py
(test_train_job_succeeds), beside the shipped configs' runs: one head node start for all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]

TRAIN_CONFIGS = [
    "demo-rnn", "demo-vae", "demo-gan", "rnn-shakespeare", "vae-mnist", "dcgan-mnist", "wgan-gp-mnist", "sentence-vae", "text-gan",
]


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_job_configs_validate(name: str) -> None:
    """Every training config in jobs/configs/ loads and validates (no Ray needed)."""
    from creagen_ray.config import load_config

    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml")
    assert cfg.train.num_workers == 2
