"""Prepare a data source into Parquet shards + manifest.json with Ray Data, and read them back.

    prepared = prepare_data(cfg.data, storage_path="./runs")   # no-op when already up to date
    ds = prepared.train_dataset()                                # ray.data.read_parquet, streamed
    for batch in ds.iter_torch_batches(batch_size=64): ...       # {"tokens": int32 [64, T+1]}

Layout (docs/architecture.md):
    <dir>/manifest.json   format, source, source_sha256, config, spec, tokenizer, schema, splits
    <dir>/train/*.parquet text: "tokens" int32 tensor [seq_len+1]; images: "image" uint8 [C,H,W] (+ "label" int64)
    <dir>/val/*.parquet

Splits. Text: the first (1 - val_fraction) of the tokens is train, the rest val (nanoGPT's
convention); windows are cut inside each part, so none crosses the split. The char vocabulary
is fitted on the whole corpus, so every validation character has an id (as nanoGPT does).
Images: val = the items whose index % k == 0 with k = round(1 / val_fraction) (at least 2), so
val_fraction=0.2 gives MNIST's `index % 5 == 0` convention.

Writes are atomic: shards and manifest are built in a temporary folder next to the target and
renamed into place, so an error never leaves a half-written output folder.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from creagen_ray.cluster import connect_ray
from creagen_ray.config import DataConfig, DataSpec
from creagen_ray.data.sources import (
    DataError,
    ImageData,
    TextData,
    decode_utf8,
    finish_images,
    guess_kind,
    read_source,
    source_checksum,
)
from creagen_ray.tokenizer import ByteTokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

FORMAT = "creagen-data/1"
SPLITS = ("train", "val")
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the result


@dataclass
class PreparedData:
    """A prepared data folder: its manifest, and Ray Datasets over its shards."""

    path: Path
    manifest: dict[str, Any]
    seconds: float = 0.0  # wall time of the call that returned this object
    status: str = "loaded"  # "prepared" | "up to date" | "loaded"

    @property
    def spec(self) -> DataSpec:
        """What a model is built from (vocab size / image shape)."""
        return DataSpec(**self.manifest["spec"])

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The text tokenizer, or None for images."""
        d = self.manifest.get("tokenizer")
        return tokenizer_from_dict(d) if d else None

    @property
    def columns(self) -> list[str]:
        """The contract columns a training batch holds ("tokens", or "image" [+ "label"])."""
        return list(self.manifest["schema"])

    def num_rows(self, split: str = "train") -> int:
        """Rows (windows or images) in a split."""
        return int(self.manifest["splits"][split]["rows"])

    def files(self, split: str = "train") -> list[Path]:
        """The split's Parquet shards, in the order they were written."""
        return [self.path / f for f in self.manifest["splits"][split]["files"]]

    def dataset(self, split: str, columns: list[str] | None = None):
        """`ray.data.read_parquet` over one split (streamed), or None when the split is empty.

        By default only the contract columns are read (builtin:shapes also stores its factors
        scale/rotation/pos_x/pos_y; pass `columns` to get them).
        """
        import ray.data

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        files = self.files(split)
        if not files:
            return None
        connect_ray()
        return ray.data.read_parquet([str(f) for f in files]).select_columns(columns or self.columns)

    def nbytes(self, split: str = "train", columns: list[str] | None = None) -> int:
        """Uncompressed bytes of a split's columns (from the Parquet footers: what it takes in memory)."""
        import pyarrow.parquet as pq

        want = set(columns or self.columns)
        total = 0
        for f in self.files(split):
            meta = pq.ParquetFile(f).metadata
            for i in range(meta.num_row_groups):
                rg = meta.row_group(i)
                for j in range(rg.num_columns):
                    col = rg.column(j)
                    if col.path_in_schema.split(".")[0] in want:
                        total += col.total_uncompressed_size
        return total

    def train_dataset(self, columns: list[str] | None = None):
        """The training split as a Ray Dataset."""
        return self.dataset("train", columns)

    def val_dataset(self, columns: list[str] | None = None):
        """The validation split as a Ray Dataset (None when val_fraction was 0)."""
        return self.dataset("val", columns)

    def torch_dtypes(self) -> dict[str, Any]:
        """`iter_torch_batches(dtypes=...)` that gives int64 tokens / labels (what nn.Embedding and
        cross-entropy want) and keeps images uint8. Covers every contract column, as Ray needs."""
        import torch

        return {name: torch.int64 if name in ("tokens", "label") else torch.uint8 for name in self.columns}

    def read_numpy(self, split: str = "train", columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """A whole split as numpy arrays, rows in written order (pyarrow, no Ray tasks)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        import ray.data  # noqa: F401  (registers the tensor extension types)

        columns = columns or self.columns
        files = self.files(split)
        if not files:
            return {c: np.empty((0,)) for c in columns}
        table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
        out = {}
        for c in columns:
            chunks = table.column(c).chunks
            out[c] = np.concatenate([ch.to_numpy(zero_copy_only=False) for ch in chunks])
        return out

    def summary(self) -> str:
        """Human-readable statistics: rows, tokens, vocab, shapes, time taken, path."""
        m = self.manifest
        spec, train, val = m["spec"], m["splits"]["train"], m["splits"]["val"]
        took = m["prepare_seconds"]
        when = {
            "prepared": f"prepared in {self.seconds:.2f} s",
            "up to date": f"up to date (checked in {self.seconds:.2f} s; first prepared in {took:.2f} s)",
            "loaded": f"loaded in {self.seconds:.2f} s (prepared in {took:.2f} s)",
        }[self.status]
        lines = [
            f"data: {self.path}",
            f"  {when}",
            f"  source: {m['source']} ({m['kind']}, sha256 {m['source_sha256'][:12]})",
        ]
        if spec["modality"] == "text":
            tok = m["tokenizer"]
            lines.append(f"  tokenizer: {tok['kind']}, vocab size {spec['vocab_size']}")
            lines.append(f"  windows: {spec['seq_len'] + 1} tokens (seq_len {spec['seq_len']} + 1), stride {m['config']['stride'] or spec['seq_len']}")
            for name, s in (("train", train), ("val", val)):
                lines.append(
                    f"  {name + ':':6} {s['rows']:>9,} rows  {s['tokens']:>12,} tokens in windows  "
                    f"(from {s['source_tokens']:,} corpus tokens)  {len(s['files'])} file(s)"
                )
        else:
            c, hw = spec["channels"], spec["image_size"]
            classes = f", {spec['num_classes']} classes" if spec["num_classes"] else ", no labels"
            lines.append(f"  images: uint8 [{c}, {hw}, {hw}]{classes}")
            for name, s in (("train", train), ("val", val)):
                lines.append(f"  {name + ':':6} {s['rows']:>9,} images  {len(s['files'])} file(s)")
        lines.append(f"  split: {m['split_rule']}")
        lines.append("  columns: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in m["schema"].items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# public entry points


def load_prepared(path: str | Path) -> PreparedData:
    """Open a prepared data folder (checks the manifest format and that every shard is there)."""
    t0 = time.perf_counter()
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is None:
        raise DataError(f"{path}: no readable manifest.json; not a prepared data folder (run `creagen prepare`)")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: manifest format {manifest.get('format')!r}, expected {FORMAT!r}")
    missing = [f for split in SPLITS for f in manifest["splits"][split]["files"] if not (path / f).is_file()]
    if missing:
        raise DataError(f"{path}: shards listed in manifest.json are missing: {missing[:3]}")
    return PreparedData(path, manifest, time.perf_counter() - t0, "loaded")


def prepare_data(cfg: DataConfig, storage_path: str, force: bool = False) -> PreparedData:
    """Source -> Parquet shards + manifest, or a no-op when the folder already matches.

    The folder is `cfg.output_dir`, else `<storage_path>/data/<name>-<hash of source sha256 and
    config>`. It is up to date when its manifest records the same source checksum and config.
    """
    t0 = time.perf_counter()
    kind = guess_kind(cfg)
    checksum = source_checksum(cfg, kind)  # also: a missing source fails here, before any writes
    config_used = cfg.model_dump(mode="json", exclude={"output_dir"})
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else default_output_dir(cfg, storage_path, checksum)

    if not force and _up_to_date(out, checksum, config_used):
        prepared = load_prepared(out)
        prepared.seconds, prepared.status = time.perf_counter() - t0, "up to date"
        return prepared
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise DataError(f"data.output_dir: {out} exists and is not a prepared data folder; refusing to replace it")

    log.info("preparing %s (%s) -> %s", cfg.source, kind, out)
    data = read_source(cfg, kind)
    if data.modality != cfg.modality:
        raise DataError(
            f"data.modality={cfg.modality!r} but data.source {cfg.source!r} is {data.modality} data; "
            f"set data.modality={data.modality!r}"
        )
    if isinstance(data, TextData):
        splits, extra = _text_splits(data, cfg)
    else:
        splits, extra = _image_splits(finish_images(data, cfg), cfg)
    stats = extra.pop("split_stats")

    manifest = {
        "format": FORMAT,
        "source": cfg.source,
        "kind": kind,
        "source_sha256": checksum,
        "config": config_used,
        **extra,
        "splits": {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    connect_ray()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for split in SPLITS:
            columns = splits[split]
            files = _write_split(columns, tmp / split, cfg.rows_per_shard)
            rows = len(next(iter(columns.values())))
            manifest["splits"][split] = {"rows": rows, "files": [f"{split}/{f}" for f in files], **stats[split]}
        manifest["prepare_seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out, checksum, config_used)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedData(out, manifest, time.perf_counter() - t0, "prepared")


def default_output_dir(cfg: DataConfig, storage_path: str, checksum: str) -> Path:
    """`<storage>/data/<readable source name>-<12 hex of sha256(source checksum + config)>`."""
    config_used = cfg.model_dump(mode="json", exclude={"output_dir"})
    key = json.dumps({"source_sha256": checksum, "config": config_used}, sort_keys=True)
    first = cfg.source[0] if isinstance(cfg.source, list) else cfg.source
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(first.removeprefix("builtin:")).name.split(".")[0]).strip("-")
    return Path(storage_path).expanduser() / "data" / f"{stem or 'data'}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------------------------
# splitting


def windows(ids: np.ndarray, length: int, stride: int) -> np.ndarray:
    """All windows ids[s : s + length] for s = 0, stride, 2 * stride, ... that fit: [n, length]."""
    if len(ids) < length:
        return np.empty((0, length), dtype=ids.dtype)
    return np.lib.stride_tricks.sliding_window_view(ids, length)[::stride].copy()


def _text_splits(data: TextData, cfg: DataConfig) -> tuple[dict, dict]:
    """Tokenize, split by position (train first), and cut each part into windows of seq_len + 1."""
    if cfg.tokenizer == "byte":
        raw = data.raw[: cfg.max_items] if cfg.max_items else data.raw
        tokenizer: Tokenizer = ByteTokenizer()
        ids = np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
    else:
        text = decode_utf8(data.raw, data.name)
        text = text[: cfg.max_items] if cfg.max_items else text
        tokenizer = CharTokenizer.fit(text)  # whole corpus: every val character gets an id
        lookup = np.full(max(map(ord, tokenizer.chars)) + 1, -1, dtype=np.int32)
        lookup[[ord(c) for c in tokenizer.chars]] = np.arange(tokenizer.vocab_size, dtype=np.int32)
        ids = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]

    length, stride = cfg.seq_len + 1, cfg.stride or cfg.seq_len
    n_train = int(len(ids) * (1 - cfg.val_fraction))
    parts = {"train": ids[:n_train], "val": ids[n_train:]}
    for split, part in parts.items():
        if len(part) < length and (split == "train" or cfg.val_fraction > 0):
            raise DataError(
                f"data.seq_len: the {split} part of {data.name} has {len(part)} tokens, fewer than one window of "
                f"seq_len + 1 = {length}; lower data.seq_len or use a longer corpus"
            )
    splits = {split: {"tokens": windows(part, length, stride)} for split, part in parts.items()}
    spec = DataSpec(modality="text", vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len)
    extra = {
        "spec": spec.model_dump(),
        "tokenizer": tokenizer.to_dict(),
        "schema": {"tokens": {"dtype": "int32", "shape": [length]}},
        "split_rule": f"by position: first {1 - cfg.val_fraction:.0%} of {len(ids):,} tokens train, rest val; "
        f"no window crosses; {tokenizer.kind} vocab fitted on the whole corpus",
        "split_stats": {
            s: {"tokens": int(splits[s]["tokens"].size), "source_tokens": len(parts[s])} for s in SPLITS
        },
    }
    return splits, extra


def _image_splits(data: ImageData, cfg: DataConfig) -> tuple[dict, dict]:
    """Split images by index: val = index % k == 0, k = max(2, round(1 / val_fraction))."""
    n = len(data.images)
    columns = {"image": data.images}
    if data.labels is not None:
        columns["label"] = data.labels
    columns.update(data.extra)
    if cfg.val_fraction > 0:
        k = max(2, round(1 / cfg.val_fraction))
        is_val = np.arange(n) % k == 0
        rule = f"by index: val = index % {k} == 0"
    else:
        is_val = np.zeros(n, dtype=bool)
        rule = "no validation split (val_fraction = 0)"
    splits = {"train": {c: v[~is_val] for c, v in columns.items()}, "val": {c: v[is_val] for c, v in columns.items()}}
    if len(splits["train"]["image"]) == 0:
        raise DataError(f"data.source: {data.name} has {n} image(s), too few for a training split")
    c, h, w = data.images.shape[1:]
    spec = DataSpec(modality="image", channels=c, image_size=h, num_classes=data.num_classes)
    schema = {"image": {"dtype": "uint8", "shape": [c, h, w]}}
    if data.labels is not None:
        schema["label"] = {"dtype": "int64", "shape": []}
    extra = {
        "spec": spec.model_dump(),
        "tokenizer": None,
        "schema": schema,
        "extra_columns": sorted(data.extra),
        "split_rule": rule,
        "split_stats": {s: {"tokens": None} for s in SPLITS},
    }
    return splits, extra


# ----------------------------------------------------------------------------------------------
# writing


def _write_split(columns: dict[str, np.ndarray], out_dir: Path, rows_per_shard: int) -> list[str]:
    """Write columns as Parquet shards of at most rows_per_shard rows with Ray Data; returns file names."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    n = len(next(iter(columns.values())))
    if n == 0:
        out_dir.mkdir()
        return []

    def arrow(a: np.ndarray) -> pa.Array:
        return ArrowTensorArray.from_numpy(a) if a.ndim > 1 else pa.array(a)

    tables = [
        pa.table({name: arrow(col[start : start + rows_per_shard]) for name, col in columns.items()})
        for start in range(0, n, rows_per_shard)
    ]
    ray.data.from_arrow(tables).write_parquet(str(out_dir))
    return sorted(p.name for p in out_dir.glob("*.parquet"))


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """manifest.json of a folder, or None when absent or unreadable."""
    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _up_to_date(out: Path, checksum: str, config_used: dict[str, Any]) -> bool:
    """True when `out` holds a complete preparation of this exact source and config."""
    m = _read_manifest(out)
    if m is None or m.get("format") != FORMAT or m.get("source_sha256") != checksum or m.get("config") != config_used:
        return False
    return all((out / f).is_file() for split in SPLITS for f in m["splits"][split]["files"])


def _move_into_place(tmp: Path, out: Path, checksum: str, config_used: dict[str, Any]) -> None:
    """Rename tmp to out, replacing a stale out; if a concurrent run won the race, keep theirs."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if not _up_to_date(out, checksum, config_used):
            if old is not None and not out.exists():
                os.rename(old, out)  # put the previous version back
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run just wrote the same data
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
