"""Training checkpoints: one `state.pt` per checkpoint directory, loadable without unpickling code.

A checkpoint directory (what `ray.train.report(checkpoint=...)` persists) holds:

    state.pt    torch.save of plain containers and tensors only, so that
                torch.load(path, weights_only=True) reads it:
                  format      "creagen-checkpoint/1"
                  step, epoch training steps / full epochs done
                  family      Family.state_dict(): modules, optimizers, schedulers, scaler, step
                  rng         one RNG state per rank (torch, cuda, python, numpy), index = world rank
                  config      the resolved ExperimentConfig as a JSON dict
                  spec        the DataSpec as a JSON dict
                  tokenizer   Tokenizer.to_dict() or None
                  seeded_from the path of the explicit checkpoint this run lineage started from
                              (Tune/PBT donors; None for a plain run)
                  metrics     the scalar metrics reported with it
    meta.json   step, epoch and metrics for humans and scripts (not needed to resume)

The file is written to a temporary name and moved into place with os.replace, so a crash never
leaves a half-written state.pt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

FORMAT = "creagen-checkpoint/1"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, of another format, or unreadable."""


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch, cuda, python, numpy) as tensors and plain containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's RNGs to a `capture_rng()` result."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """Lists back to tuples, recursively (random.setstate wants tuples)."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on one intra-op torch thread (as Ray's workers do), then restore the count.

    For the driver's small-model work after training (samples, quality, the bundle): a GRU or a
    small conv net gains nothing from a second thread, and on a busy machine the threads' spinning
    costs far more than it saves. Measured on the shared 2-core machine (load 16-20): 16 x 200
    tokens from rnn-shakespeare's GRU took 0.3-0.5 s wall on 1 thread, 14.5-25 s on 2.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed torch, python and numpy RNGs of this process."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (see module doc) into `directory`/state.pt atomically; returns the file path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    tmp = d / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, d / STATE_FILE)
    meta = {"format": FORMAT, "step": state.get("step"), "epoch": state.get("epoch"), "metrics": state.get("metrics", {})}
    tmp_meta = d / f".{META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True, default=float), encoding="utf-8")
    os.replace(tmp_meta, d / META_FILE)
    return d / STATE_FILE


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory's state.pt with weights_only=True (no code is unpickled)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a creagen checkpoint: {STATE_FILE} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return state


def load_ray_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """Load the state of a ray.train / ray.tune Checkpoint (local or remote storage)."""
    with checkpoint.as_directory() as d:
        return load_checkpoint(d)


def load_newest_readable(checkpoint: Any) -> tuple[dict[str, Any], Any]:
    """(state, checkpoint it came from): `checkpoint`, else the newest readable one beside it.

    Ray Train resumes from the latest checkpoint it recorded; if that one is corrupt (a truncated
    state.pt, a deleted file), every rerun would fail on it although an older intact checkpoint
    is usually still in the run folder (train.num_to_keep). The siblings are Ray's
    `checkpoint_<timestamp>` folders, tried newest first; a warning names the bad one and the one
    used. Raises the original CheckpointError when none is readable.
    """
    import pyarrow.fs
    import ray.train

    try:
        return load_ray_checkpoint(checkpoint), checkpoint
    except CheckpointError as err:
        first = err
    fs, bad = checkpoint.filesystem, checkpoint.path.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(posixpath.dirname(bad), allow_not_found=True))
    siblings = sorted(
        (i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
         and posixpath.basename(i.path).startswith("checkpoint_") and i.path.rstrip("/") != bad),
        reverse=True,  # Ray names them checkpoint_<YYYY-MM-DD_HH-MM-SS.ffffff>: newest first
    )
    for path in siblings:
        candidate = ray.train.Checkpoint(path, filesystem=fs)
        try:
            state = load_ray_checkpoint(candidate)
        except CheckpointError:
            continue
        log.warning(
            "the latest checkpoint %s is unreadable (%s); resuming from the newest readable one, %s (step %s)",
            bad, first, path, state.get("step"),
        )
        return state, candidate
    raise first
