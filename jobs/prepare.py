"""Ray Job entrypoint for data preparation: a thin door into `creagen_ray.data.prepare_data`.

    ray job submit --working-dir . -- python jobs/prepare.py jobs/configs/demo-rnn.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir holds the package

from creagen_ray.config import ConfigError, load_config  # noqa: E402
from creagen_ray.data import prepare_data  # noqa: E402
from creagen_ray.training import connect_ray  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse CONFIG [--set k=v ...] [--force], prepare the data, print its statistics."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="YAML or JSON experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true", help="rewrite shards even if up to date")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"jobs/prepare.py: {e}", file=sys.stderr)
        return 2
    connect_ray()
    print(prepare_data(cfg.data, storage_path=cfg.train.storage_path, force=args.force).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
