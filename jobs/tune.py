"""Ray Job entrypoint for a hyperparameter search: `creagen tune` inside a job.

    ray job submit --working-dir . -- python jobs/tune.py jobs/configs/rnn-shakespeare-tune.yaml
    ray job submit --working-dir . -- python jobs/tune.py jobs/configs/demo-tune.yaml --resume
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir holds the package

from creagen_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
