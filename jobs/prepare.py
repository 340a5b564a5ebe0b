"""Ray Job entrypoint for data preparation: `creagen prepare` inside a job.

    ray job submit --working-dir . -- python jobs/prepare.py jobs/configs/demo-rnn.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir holds the package

from creagen_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
