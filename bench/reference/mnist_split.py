"""What the plain reference scripts share: MNIST t10k from idx files, the split, the wall-clock loop.

The split is the project's (data.val_fraction 0.2 on images): items with index % 5 == 0 are the
2,000 evaluation images, the other 8,000 train. Nothing here imports creagen_ray: the references
are what a user would write with PyTorch alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
# ../shared/data/mnist from the repo root, or $CREAGEN_SHARED_DATA/mnist (as the tests use)
MNIST_DIR = Path(os.environ.get("CREAGEN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "mnist"


def read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (optionally gzipped) as a numpy array."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(mnist_dir: Path = MNIST_DIR) -> dict[str, torch.Tensor]:
    """train/eval images uint8 [N, 1, 28, 28] and labels int64 [N]; eval = index % 5 == 0."""
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    is_eval = np.arange(len(images)) % 5 == 0
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels)
    return {"train_x": x[~is_eval], "train_y": y[~is_eval], "eval_x": x[is_eval], "eval_y": y[is_eval]}


def batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled float [B, 1, 28, 28] batches in [0, 1], epoch after epoch, forever."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield x[perm[i : i + batch_size]].float() / 255.0


def run_for(budget_s: float, step: Callable[[], None], max_steps: int | None = None) -> tuple[int, float]:
    """Call step() until budget_s seconds of wall clock have passed (or max_steps calls); returns (steps, seconds)."""
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < budget_s and (max_steps is None or n < max_steps):
        step()
        n += 1
    return n, time.perf_counter() - t0


def parse_args(doc: str) -> argparse.Namespace:
    """--budget seconds, --steps cap, --out folder, --threads, --seed (every reference takes the same flags)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--budget", type=float, default=180.0, help="seconds of training (wall clock)")
    p.add_argument("--steps", type=int, default=None,
                   help="stop after this many steps even within the budget (quality at equal images seen)")
    p.add_argument("--out", type=Path, required=True, help="folder for samples.pt and result.json")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 = the whole 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=2000)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    return a


def save(out: Path, samples01: torch.Tensor, result: dict) -> None:
    """samples uint8 [N, 1, 28, 28] -> out/samples.pt; result -> out/result.json."""
    torch.save((samples01.clamp(0, 1) * 255).round().to(torch.uint8), out / "samples.pt")
    (out / "result.json").write_text(json.dumps(result, indent=2))
