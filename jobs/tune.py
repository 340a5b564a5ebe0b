"""Ray Job entrypoint for a hyperparameter search (a door into creagen_ray.tuning; no logic here).

    ray job submit --working-dir . -- python jobs/tune.py jobs/configs/rnn-shakespeare-tune.yaml
    ray job submit --working-dir . -- python jobs/tune.py jobs/configs/demo-tune.yaml --resume
"""

from __future__ import annotations

import argparse
import sys

from creagen_ray.config import ConfigError
from creagen_ray.tuning import tune_from_file


def main(argv: list[str] | None = None) -> int:
    """Parse CONFIG [--set k=v ...] [--resume] [--address], run the search, print its summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (Tuner.restore)")
    p.add_argument("--address", default=None, help="Ray address; default: the job's cluster")
    args = p.parse_args(argv)
    try:
        result = tune_from_file(args.config, args.overrides, resume=args.resume, address=args.address)
    except ConfigError as e:
        print(f"tune: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
