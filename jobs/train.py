"""Ray Job entrypoint for training: a thin door into `creagen_ray.training.train`.

    ray job submit --working-dir . -- python jobs/train.py jobs/configs/demo-rnn.yaml --set train.steps=200

Inside a job RAY_ADDRESS points at the cluster, so `train` joins it. Data sources are read where
the job runs: relative paths resolve inside the job's copy of the working dir, so pass absolute
paths (or paths on a shared mount) with --set data.source=... for files outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir holds the package

from creagen_ray.config import ConfigError, load_config  # noqa: E402
from creagen_ray.training import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse CONFIG [--set k=v ...], train, print the bundle path and final metrics as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="YAML or JSON experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS / a running cluster)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"jobs/train.py: {e}", file=sys.stderr)
        return 2
    result = train(cfg, address=args.address)
    print(f"bundle: {result.bundle_path}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
