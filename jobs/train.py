"""Ray Job entrypoint for training: `creagen train` inside a job (the library does the work).

    ray job submit --working-dir . -- python jobs/train.py jobs/configs/demo-rnn.yaml \
        --set train.storage_path=s3://my-bucket/creagen-runs     # prints: bundle: s3://.../<run>/bundle

Inside a job RAY_ADDRESS points at the cluster, so training joins it. The job's working dir is a
temporary copy: give train.storage_path as a storage URI (docs/storage.md) so data, checkpoints and
the bundle outlive the job. Data sources are read where the job runs: relative paths resolve inside
that copy, so pass URIs or absolute paths (or paths on a shared mount) with --set data.source=...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working dir holds the package

from creagen_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
