"""Prepare a data source into Parquet shards + manifest.json as a Ray Data pipeline, and read them back.

    prepared = prepare_data(cfg.data, storage_path="./runs")   # no-op when already up to date
    ds = prepared.train_dataset()                                # ray.data.read_parquet, streamed
    for batch in ds.iter_torch_batches(batch_size=64): ...       # {"tokens": int32 [64, T+1]}

Layout (docs/architecture.md), on a local disk or behind a URI (s3://, gs://; `storage.resolve`):
    <dir>/manifest.json   format, source, source_sha256, config, spec, tokenizer, schema, splits
    <dir>/train/*.parquet text: "tokens" int32 tensor [seq_len+1]; images: "image" uint8 [C,H,W] (+ "label" int64)
    <dir>/val/*.parquet   shard names sort in row order

The pipeline. The driver lists the files, reads headers and plans *pieces* (a byte range of a
text file, a range of items of an idx/.npy file, a Parquet row group, a batch of image files);
Ray Data tasks (`map_batches`) read, tokenize / decode, convert, window and write each piece's
shards straight to storage and hand back only counts. So the cluster's CPUs do the work and the
driver's memory does not grow with the data. Text with the char tokenizer takes a first pass
(each piece's character set and length, merged on the driver) to fit the vocabulary; the byte
tokenizer needs none. PNG/JPEG folders take a first pass over the headers (sizes, modes, broken
files), then `ray.data.read_images` decodes them.

Splits. Text, one file (`data.split: position`, the default for one file): the first
(1 - val_fraction) of the tokens is train, the rest val (nanoGPT's convention); windows are cut
inside each part, so none crosses the split; identical to the single-process version this
replaced. Several files (`data.split: file`, their default): whole files go to val, chosen by a
hash of their name, so adding a file moves no other; windows never cross files. The char
vocabulary is fitted on the whole corpus, so every validation character has an id.
Images: val = the items whose index % k == 0 with k = round(1 / val_fraction) (at least 2), so
val_fraction=0.2 gives MNIST's `index % 5 == 0` convention.

Writes are atomic: shards are written under a temporary folder next to the target; the manifest
goes last, and the folder is renamed into place (on an object store, where there is no rename,
the old manifest is removed first and the new one written after every shard), so an error
never leaves a half-written output folder, and a reader trusts only a manifest.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs

from creagen_ray.cluster import connect_ray
from creagen_ray.config import DataConfig, DataSpec
from creagen_ray.data import builtin
from creagen_ray.data.sources import (
    GRAY_MODES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataError,
    SourceFile,
    first_line,
    idx_header,
    list_files,
    locate,
    npy_header,
    open_location,
    parquet_schema,
    probe_image,
    python_docs_bytes,
    read_idx_items,
    read_npy_items,
    read_parquet_text,
    read_text_piece,
    source_checksum,
    sources_of,
)
from creagen_ray.storage import is_uri
from creagen_ray.tokenizer import ByteTokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict

FORMAT = "creagen-data/1"
SPLITS = ("train", "val")
TEXT_PIECE_BYTES = 8 << 20  # bytes of text per Ray task
IMAGE_PIECE_ITEMS = 8192  # images per Ray task (idx, .npy, builtin:shapes)
PROBE_PIECE_FILES = 256  # image files whose headers one task checks
TASKS_PER_CPU = 4  # Ray tasks per cluster CPU in each pass (a task works through several pieces)
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the result


@dataclass
class PreparedData:
    """A prepared data folder (local path or URI): its manifest, and Ray Datasets over its shards."""

    path: Path | str  # a Path on the local disk, the URI string otherwise
    manifest: dict[str, Any]
    seconds: float = 0.0  # wall time of the call that returned this object
    status: str = "loaded"  # "prepared" | "up to date" | "loaded"

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem the shards live on (`files()` are paths inside it)."""
        return open_location(str(self.path), "data path")[0]

    def cached(self, kind: str, key: Any, load: Callable[[bytes], Any], build: Callable[[], tuple[Any, bytes]]) -> Any:
        """An artifact derived from this data, kept at `<data>/<kind>/<key>.safetensors` (local or URI).

        The key hashes the manifest's source checksum and config with `key`. A cached file is read
        with `load` (ValueError or OSError: built again); otherwise `build()` gives (artifact, bytes)
        and the bytes are written whole or not at all (a folder that cannot be written only means
        no cache). Later runs and every Tune trial on the same data load it instead of building it.
        """
        fs, root = open_location(str(self.path), "data path")
        src = json.dumps([self.manifest.get("source_sha256"), self.manifest.get("config"), key], sort_keys=True)
        path = f"{root}/{kind}/{hashlib.sha256(src.encode()).hexdigest()[:16]}.safetensors"
        try:
            with fs.open_input_stream(path) as f:
                return load(f.read())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            log.warning("%s cache %s unreadable (%s): building it again", kind, path, err)
        artifact, data = build()
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        except OSError as err:
            log.warning("could not write the cache file %s: %s", path, err)
            try:
                fs.delete_file(tmp)
            except OSError:
                pass
        return artifact

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

    def files(self, split: str = "train") -> list:
        """The split's Parquet shards in row order: Paths locally, paths inside `filesystem` for a URI."""
        names = self.manifest["splits"][split]["files"]
        if isinstance(self.path, Path):
            return [self.path / f for f in names]
        root = open_location(self.path, "data path")[1]
        return [f"{root}/{f}" for f in names]

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
        return ray.data.read_parquet([str(f) for f in files], filesystem=self.filesystem).select_columns(
            columns or self.columns
        )

    def nbytes(self, split: str = "train", columns: list[str] | None = None) -> int:
        """Uncompressed bytes of a split's columns (from the Parquet footers: what it takes in memory)."""
        import pyarrow.parquet as pq

        want = set(columns or self.columns)
        total = 0
        fs = self.filesystem
        for f in self.files(split):
            meta = pq.ParquetFile(str(f), filesystem=fs).metadata
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

    def read_tables(self, split: str = "train", columns: list[str] | None = None) -> list:
        """A whole split as pyarrow Tables, one per shard in row order (pyarrow.fs on the driver, no Ray tasks)."""
        import pyarrow.parquet as pq
        import ray.data  # noqa: F401  (registers the tensor extension types)

        fs = self.filesystem
        return [pq.read_table(str(f), columns=columns or self.columns, filesystem=fs) for f in self.files(split)]

    def read_numpy(self, split: str = "train", columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """A whole split as numpy arrays, rows in written order (pyarrow, no Ray tasks)."""
        import pyarrow as pa

        columns = columns or self.columns
        tables = self.read_tables(split, columns)
        if not tables:
            return {c: np.empty((0,)) for c in columns}
        table = pa.concat_tables(tables)
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
        skipped = m.get("skipped_files", {}).get("count", 0)
        if skipped:
            lines.append(f"  skipped {skipped} unreadable file(s) (data.skip_bad_files), e.g. {m['skipped_files']['files'][0]}")
        lines.append("  columns: " + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in m["schema"].items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# public entry points


def load_prepared(path: str | Path) -> PreparedData:
    """Open a prepared data folder (checks the manifest format and that every shard is there)."""
    t0 = time.perf_counter()
    location = str(path)
    fs, root = open_location(location, "data path")
    manifest = _read_manifest(fs, root)
    if manifest is None:
        relative = not is_uri(location) and not Path(location).is_absolute()
        where = f" (a relative path, read from the working directory {Path.cwd()})" if relative else ""
        raise DataError(
            f"{location}{where}: no readable manifest.json, so this is not a prepared data folder; "
            "`creagen prepare CONFIG` (and `creagen train CONFIG`, which prepares first) writes one at "
            "data.output_dir or <train.storage_path>/data/"
        )
    if manifest.get("format") != FORMAT:
        raise DataError(f"{location}: manifest format {manifest.get('format')!r}, expected {FORMAT!r}")
    missing = _missing_shards(fs, root, manifest)
    if missing:
        raise DataError(f"{location}: shards listed in manifest.json are missing: {missing[:3]}")
    local = Path(path) if not is_uri(location) else location
    return PreparedData(local, manifest, time.perf_counter() - t0, "loaded")


def prepare_data(cfg: DataConfig, storage_path: str, force: bool = False) -> PreparedData:
    """Source -> Parquet shards + manifest, or a no-op when the folder already matches.

    The folder is `cfg.output_dir`, else `<storage_path>/data/<name>-<hash of source sha256 and
    config>`; either may be a URI. It is up to date when its manifest records the same source
    checksum and config.
    """
    t0 = time.perf_counter()
    kind, fs, files = locate(cfg)  # a missing or unreadable source fails here, before any writes
    checksum = source_checksum(cfg, kind, fs, files)
    config_used = cfg.model_dump(mode="json", exclude={"output_dir"})
    out = str(cfg.output_dir if cfg.output_dir else default_output_dir(cfg, storage_path, checksum))
    out_fs, out_path = open_location(out, "data.output_dir")
    local_out: Path | str = Path(out_path) if isinstance(out_fs, pafs.LocalFileSystem) else out

    if not force and _up_to_date(out_fs, out_path, checksum, config_used):
        prepared = load_prepared(local_out)
        prepared.seconds, prepared.status = time.perf_counter() - t0, "up to date"
        return prepared
    if _read_manifest(out_fs, out_path) is None and _has_files(out_fs, out_path):
        raise DataError(f"data.output_dir: {out} exists and is not a prepared data folder; refusing to replace it")

    modality = _modality(cfg, kind)
    if modality != cfg.modality:
        raise DataError(
            f"data.modality={cfg.modality!r} but data.source {cfg.source!r} is {modality} data; "
            f"set data.modality={modality!r}"
        )
    log.info("preparing %s (%s) -> %s", cfg.source, kind, out)
    connect_ray()
    parent, name = out_path.rstrip("/").rsplit("/", 1)
    target = _Target(out_fs, f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}", cfg.rows_per_shard)
    try:
        if modality == "text":
            extra = _prepare_text(cfg, kind, fs, files, target)
        else:
            extra = _prepare_images(cfg, kind, fs, files, target)
        manifest = {
            "format": FORMAT,
            "source": cfg.source,
            "kind": kind,
            "source_sha256": checksum,
            "config": config_used,
            **extra,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "prepare_seconds": round(time.perf_counter() - t0, 3),
        }
        _write_manifest(out_fs, target.root, manifest)
        _publish(out_fs, target.root, out_path, checksum, config_used)
    except BaseException:
        _remove(out_fs, target.root)
        raise
    return PreparedData(local_out, manifest, time.perf_counter() - t0, "prepared")


def default_output_dir(cfg: DataConfig, storage_path: str, checksum: str) -> str:
    """`<storage>/data/<readable source name>-<12 hex of sha256(source checksum + config)>`."""
    config_used = cfg.model_dump(mode="json", exclude={"output_dir"})
    key = json.dumps({"source_sha256": checksum, "config": config_used}, sort_keys=True)
    first = sources_of(cfg)[0].rstrip("/")
    base = first.removeprefix("builtin:").rsplit("/", 1)[-1].split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-")
    root = storage_path if is_uri(storage_path) else str(Path(storage_path).expanduser())
    return f"{root.rstrip('/')}/data/{stem or 'data'}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _modality(cfg: DataConfig, kind: str) -> str:
    """What a source holds: text or images (Parquet holds what data.modality asks for)."""
    if kind == "builtin":
        return "text" if sources_of(cfg)[0] == "builtin:python-docs" else "image"
    return {"text": "text", "parquet": cfg.modality}.get(kind, "image")


# ----------------------------------------------------------------------------------------------
# the Ray Data pipeline: pieces in, per-piece results out (shards are written by the tasks)


@dataclass(frozen=True)
class _Target:
    """Where the tasks write shards: a (temporary) folder on a filesystem."""

    fs: pafs.FileSystem
    root: str
    rows_per_shard: int


def _run_pieces(pieces: list[dict], work: Callable[..., dict], **kwargs: Any) -> list[dict]:
    """Run `work(piece, **kwargs)` for every piece in Ray Data tasks; results in piece order.

    A piece that fails on its data returns {"error": ...} instead of raising, so the driver can
    name the file (or skip it) without a task traceback. The pieces are dealt round-robin into
    TASKS_PER_CPU tasks per cluster CPU (so the pieces of one large file spread over all tasks),
    each task working through its share: with one task per piece the CPUs sat idle between
    tasks while Ray Data scheduled the next one.
    """
    import ray
    import ray.data

    if not pieces:
        return []
    n_tasks = min(len(pieces), TASKS_PER_CPU * max(2, int(ray.cluster_resources().get("CPU", 0))))
    shares = [json.dumps(pieces[i::n_tasks]) for i in range(n_tasks)]
    ds = ray.data.from_items([{"pieces": s} for s in shares], override_num_blocks=n_tasks)
    # One operator, so nothing downstream needs resources reserved for it; with the reservation
    # (Ray Data's default) the first tasks ran one at a time on 2 CPUs. This dataset's context only.
    ds.context.op_resource_reservation_enabled = False
    ds = ds.map_batches(_pieces_batch, batch_size=1, fn_kwargs={"work": work, "kwargs": kwargs})
    results = [json.loads(r["result"]) for r in ds.take_all()]
    return sorted(results, key=lambda r: r["key"])


def _pieces_batch(batch: dict[str, np.ndarray], work: Callable[..., dict], kwargs: dict) -> dict[str, np.ndarray]:
    """map_batches UDF: a JSON list of pieces in, one JSON result per piece out; data errors become results."""
    out = []
    for text in batch["pieces"]:
        for piece in json.loads(text):
            try:
                result = work(piece, **kwargs)
            except (DataError, OSError, ValueError, EOFError) as e:  # pyarrow's errors derive from these
                result = {"error": f"{piece.get('name', '?')}: {first_line(e)}"}
                if isinstance(e, DataError):
                    result["error"] = str(e)
            result["key"] = piece["key"]
            out.append(json.dumps(result))
    return {"result": np.array(out, dtype=object)}


def _errors(results: list[dict], pieces: list[dict]) -> list[tuple[dict, str]]:
    """(piece, message) of every failed piece."""
    by_key = {p["key"]: p for p in pieces}
    return [(by_key[r["key"]], r["error"]) for r in results if "error" in r]


def _write_shards(target: _Target, split: str, key: int, columns: dict[str, np.ndarray]) -> list[str]:
    """Write columns as `<split>/part-<key>-<j>.parquet` shards of at most rows_per_shard rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(next(iter(columns.values())))
    names = []
    folder = f"{target.root}/{split}"
    if n:
        target.fs.create_dir(folder, recursive=True)
    for j, start in enumerate(range(0, n, target.rows_per_shard)):
        part = {c: _column(v[start : start + target.rows_per_shard]) for c, v in columns.items()}
        name = f"part-{key:09d}-{j:03d}.parquet"
        with target.fs.open_output_stream(f"{folder}/{name}") as f:
            pq.write_table(pa.table(part), f)
        names.append(f"{split}/{name}")
    return names


def _column(values: np.ndarray):
    """A numpy column as Arrow: Ray's tensor extension type for [n, ...] arrays, plain otherwise.

    The tensor array is built from its storage (one flat buffer + offsets): the same type and
    values as `ArrowTensorArray.from_numpy`, which takes seconds per 4 MB of windows here.
    """
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    if values.ndim == 1:
        return pa.array(values)
    typ = ArrowTensorArray.from_numpy(values[:1]).type  # the extension type for this shape and dtype
    item = int(np.prod(values.shape[1:]))
    offsets = pa.array(np.arange(0, (len(values) + 1) * item, item, dtype=np.int64))
    storage = pa.LargeListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).reshape(-1)))
    if storage.type != typ.storage_type:
        return ArrowTensorArray.from_numpy(values)  # another storage layout: take Ray's own path
    return pa.ExtensionArray.from_storage(typ, storage)


def _gather_splits(results: list[dict]) -> dict[str, dict]:
    """Merge per-piece {"splits": {split: {"rows", "files"}}} into per-split rows and files (in order)."""
    out = {s: {"rows": 0, "files": []} for s in SPLITS}
    for r in results:
        for s, v in r["splits"].items():
            out[s]["rows"] += v["rows"]
            out[s]["files"].extend(v["files"])
    return out


def _too_many_errors(errors: list[tuple[dict, str]], cfg: DataConfig, several: bool = False) -> None:
    """Raise a DataError for the first bad file unless data.skip_bad_files is on (and there are several)."""
    if errors and not (cfg.skip_bad_files and several):
        msg = errors[0][1] if errors[0][1].startswith("data.") else f"data.source: {errors[0][1]}"
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more bad piece(s))"
        if several and not cfg.skip_bad_files:
            msg += "; or set data.skip_bad_files=true to skip bad files"
        raise DataError(msg)


def _skipped(names_reasons: list[tuple[str, str]]) -> dict:
    """The manifest's record of skipped files (count, and the first 20 with reasons)."""
    return {"count": len(names_reasons), "files": [f"{n}: {r}" for n, r in names_reasons[:20]]}


# ----------------------------------------------------------------------------------------------
# text


def _prepare_text(cfg: DataConfig, kind: str, fs: pafs.FileSystem | None, files: list[SourceFile], target: _Target) -> dict:
    """Plan, fit the vocabulary (char), choose the split, then window and write every piece."""
    length, stride = cfg.seq_len + 1, cfg.stride or cfg.seq_len
    skipped: list[tuple[str, str]] = []
    streams = _text_streams(cfg, kind, fs, files, skipped)
    pieces = []
    for i, s in enumerate(streams):
        if s["type"] == "parquet":
            pieces.append({**s, "stream": i, "start": 0, "end": s["size"]})
            continue
        for a in range(0, s["size"], TEXT_PIECE_BYTES):
            pieces.append({**s, "stream": i, "start": a, "end": min(s["size"], a + TEXT_PIECE_BYTES)})
    for k, p in enumerate(pieces):
        p.update(key=k, overlap=length - 1, tokenizer=cfg.tokenizer)

    # first pass: each piece's length (and characters); the byte tokenizer knows lengths from sizes
    if cfg.tokenizer == "char" or any(s["type"] == "parquet" for s in streams):
        results = _run_pieces(pieces, _text_stats_piece, fs=fs)
        errors = _errors(results, pieces)
        _too_many_errors(errors, cfg, several=len(streams) > 1)
        bad = {p["stream"] for p, _ in errors}
        first_error: dict[int, str] = {}
        for p, e in errors:
            first_error.setdefault(p["stream"], e)
        skipped += [(streams[i]["name"], e) for i, e in first_error.items()]
        for p, r in zip(pieces, results):
            p["n"], p["chars"] = r.get("n", 0), r.get("chars", "")
        pieces = [p for p in pieces if p["stream"] not in bad]
    else:
        for p in pieces:
            p["n"], p["chars"] = p["end"] - p["start"], ""
    names = ", ".join(s["name"] for s in streams[:3]) + (f" and {len(streams) - 3} more" if len(streams) > 3 else "")
    total = sum(p["n"] for p in pieces)
    if total == 0 or (cfg.tokenizer == "char" and not "".join(p["chars"] for p in pieces).strip()):
        raise DataError(f"data.source: the text corpus {names} is empty")

    # global offsets; max_items keeps the first N tokens of the corpus
    g = 0
    for p in pieces:
        p["g"], g = g, g + p["n"]
    n_total = min(total, cfg.max_items) if cfg.max_items else total
    pieces = [p for p in pieces if p["g"] < n_total]
    if cfg.tokenizer == "byte":
        tokenizer: Tokenizer = ByteTokenizer()
    else:
        chars = set("".join(p["chars"] for p in pieces if p["g"] + p["n"] <= n_total))
        cut = [p for p in pieces if p["g"] + p["n"] > n_total]
        if cut:  # the piece that holds the max_items boundary: only its first characters count
            limited = [{**cut[0], "limit": n_total - cut[0]["g"]}]
            chars |= set(_run_pieces(limited, _text_stats_piece, fs=fs)[0]["chars"])
        tokenizer = CharTokenizer(sorted(chars))

    # the split: segments of the global token range, each a run of one split inside one file
    stream_range: dict[int, list[int]] = {}
    for p in pieces:
        lo_hi = stream_range.setdefault(p["stream"], [p["g"], p["g"]])
        lo_hi[1] = min(p["g"] + p["n"], n_total)
    mode = cfg.split if cfg.split != "auto" else ("position" if len(streams) == 1 else "file")
    segments: dict[int, list[tuple[int, int, str]]] = {}
    if mode == "position":
        n_train = int(n_total * (1 - cfg.val_fraction))
        for i, (lo, hi) in stream_range.items():
            segments[i] = [(a, b, s) for a, b, s in ((lo, min(hi, n_train), "train"), (max(lo, n_train), hi, "val")) if b > a]
        val_files = None
        rule = (
            f"by position: first {1 - cfg.val_fraction:.0%} of {n_total:,} tokens train, rest val; no window crosses"
            + (" the split or a file boundary" if len(stream_range) > 1 else "")
        )
    else:
        val_ids = _val_files([streams[i]["name"] for i in stream_range], list(stream_range), cfg.val_fraction)
        for i, (lo, hi) in stream_range.items():
            segments[i] = [(lo, hi, "val" if i in val_ids else "train")] if hi > lo else []
        val_files = sorted(streams[i]["name"] for i in val_ids)
        rule = (
            f"by file: {len(val_ids)} of {len(stream_range)} files val (sha256 of the file name < val_fraction); "
            "no window crosses a file boundary"
        )
    rule += f"; {tokenizer.kind} vocab fitted on the whole corpus"
    source_tokens = {s: sum(b - a for seg in segments.values() for a, b, sp in seg if sp == s) for s in SPLITS}
    windows = {s: sum(_n_windows(b - a, length, stride) for seg in segments.values() for a, b, sp in seg if sp == s) for s in SPLITS}
    for split in SPLITS:
        if windows[split] == 0 and (split == "train" or cfg.val_fraction > 0):
            what = f"{source_tokens[split]} tokens" if source_tokens[split] < length else "no file with enough tokens"
            raise DataError(
                f"data.seq_len: the {split} part of {names} has {what}, fewer than one window of "
                f"seq_len + 1 = {length}; lower data.seq_len or use a longer corpus"
            )

    # second pass: tokenize, cut windows, write shards
    for p in pieces:
        p["segments"] = [seg for seg in segments.get(p["stream"], []) if seg[0] < p["g"] + p["n"] and seg[1] > p["g"]]
        p.pop("chars", None)
    todo = [p for p in pieces if p["segments"]]
    vocab = "".join(tokenizer.chars) if cfg.tokenizer == "char" else None
    results = _run_pieces(todo, _text_windows_piece, fs=fs, target=target, vocab=vocab, length=length, stride=stride)
    _too_many_errors(_errors(results, todo), cfg)
    splits = _gather_splits(results)
    for s in SPLITS:
        splits[s].update(tokens=splits[s]["rows"] * length, source_tokens=source_tokens[s])
    if splits["train"]["rows"] != windows["train"] or splits["val"]["rows"] != windows["val"]:
        raise RuntimeError(f"planned {windows} windows, the tasks wrote {[splits[s]['rows'] for s in SPLITS]}")
    spec = DataSpec(modality="text", vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len)
    extra = {
        "spec": spec.model_dump(),
        "tokenizer": tokenizer.to_dict(),
        "schema": {"tokens": {"dtype": "int32", "shape": [length]}},
        "split_rule": rule,
        "splits": splits,
        "source_files": len(streams),
        "skipped_files": _skipped(skipped),
    }
    if val_files is not None:
        extra["val_files"] = val_files[:1000]
    return extra


def _text_streams(cfg: DataConfig, kind: str, fs: pafs.FileSystem | None, files: list[SourceFile], skipped: list) -> list[dict]:
    """The text documents of a source: raw files (read by byte range) or Parquet files (whole)."""
    import pyarrow as pa

    if kind == "builtin":
        return [{"type": "raw", "path": "builtin:python-docs", "name": "builtin:python-docs", "size": len(python_docs_bytes())}]
    if kind == "text":
        return [{"type": "raw", "path": f.path, "name": f.name, "size": f.size} for f in files]
    if kind != "parquet":
        raise DataError(f"data.modality='text' but data.source {cfg.source!r} is {kind} data; set data.modality='image'")
    column = cfg.columns.get("text", "text")
    streams = []
    for f in files:
        try:
            schema, _ = parquet_schema(fs, f)
            if column not in schema.names:
                raise DataError(
                    f"data.source: {f.name} has columns {schema.names}; data.modality='text' needs a {column!r} column "
                    "(map another one with data.columns: {text: NAME})"
                )
            typ = schema.field(column).type
            if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
                raise DataError(f"data.source: {f.name}: column {column!r} is {typ}, text needs strings")
        except DataError as e:
            if not cfg.skip_bad_files:
                raise
            skipped.append((f.name, str(e)))
            continue
        streams.append({"type": "parquet", "path": f.path, "name": f.name, "size": f.size, "column": column})
    if not streams:
        raise DataError(f"data.source: no readable Parquet file in {cfg.source!r}")
    return streams


def _piece_text(fs: pafs.FileSystem | None, piece: dict) -> tuple[bytes, bytes, int]:
    """(own bytes, following bytes, offset in the file) of a text piece."""
    if piece["type"] == "parquet":
        return read_parquet_text(fs, piece["path"], piece["column"]), b"", 0
    return read_text_piece(fs, piece)


def _decode(raw: bytes, offset: int, name: str) -> str:
    """Strict UTF-8 decoding with an error that says where the bad byte is and what to do."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"data.source: {name} is not valid UTF-8 (byte 0x{raw[e.start : e.start + 1].hex()} at offset "
            f"{offset + e.start}); convert it to UTF-8, or set data.tokenizer=byte to train on raw bytes"
        ) from None


def _code_points(raw: bytes, offset: int, name: str) -> np.ndarray:
    """Strictly decoded UTF-8 as Unicode code points (uint8 for ASCII, which needs no decoding, else uint32)."""
    if raw.isascii():
        return np.frombuffer(raw, dtype=np.uint8)
    return np.frombuffer(_decode(raw, offset, name).encode("utf-32-le"), dtype=np.uint32)


def _text_stats_piece(piece: dict, fs: pafs.FileSystem | None) -> dict:
    """First pass over one piece: its length in tokens and (char tokenizer) its sorted characters."""
    own, _, offset = _piece_text(fs, piece)
    if piece["tokenizer"] == "byte":
        return {"n": len(own)}
    codes = _code_points(own, offset, piece["name"])
    if "limit" in piece:
        codes = codes[: piece["limit"]]
    present = np.flatnonzero(np.bincount(codes)) if len(codes) else []  # sorted, like sorted(set(text))
    return {"n": len(codes), "chars": "".join(map(chr, present))}


def _text_windows_piece(
    piece: dict, fs: pafs.FileSystem | None, target: _Target, vocab: str | None, length: int, stride: int
) -> dict:
    """Second pass over one piece: token ids, the windows that start inside it, its shards."""
    own, tail, offset = _piece_text(fs, piece)
    if vocab is None:
        ids = np.frombuffer(own + tail[: length - 1], dtype=np.uint8).astype(np.int32)
        n_own = len(own)
    else:
        codes = _code_points(own, offset, piece["name"])
        n_own = len(codes)
        follow = np.frombuffer(tail.decode("utf-8", errors="replace")[: length - 1].encode("utf-32-le"), dtype=np.uint32)
        lookup = np.full(0x110000, -1, dtype=np.int32)
        lookup[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)
        ids = np.concatenate([lookup[codes], lookup[follow]])
    g = piece["g"]
    view = np.lib.stride_tricks.sliding_window_view(ids, length) if len(ids) >= length else None
    splits = {}
    for seg_start, seg_end, split in piece["segments"]:
        lo = max(g, seg_start)
        first = seg_start + -(-(lo - seg_start) // stride) * stride
        last = min(g + n_own - 1, seg_end - length)
        starts = np.arange(first, last + 1, stride) - g if view is not None and first <= last else np.empty(0, int)
        rows = view[starts] if len(starts) else np.empty((0, length), np.int32)
        if len(rows) and rows.min() < 0:
            raise RuntimeError(f"{piece['name']}: a character outside the fitted vocabulary")
        files = _write_shards(target, split, piece["key"], {"tokens": np.ascontiguousarray(rows)})
        prev = splits.setdefault(split, {"rows": 0, "files": []})
        prev["rows"] += len(rows)
        prev["files"] += files
    return {"splits": splits}


def _n_windows(n: int, length: int, stride: int) -> int:
    """Windows of `length` at 0, stride, 2 * stride, ... that fit in n tokens."""
    return 0 if n < length else (n - length) // stride + 1


def _val_files(names: list[str], ids: list[int], val_fraction: float) -> set[int]:
    """The files that go to val: sha256(name) as a fraction below val_fraction. Stable when files
    are added; with val_fraction > 0 at least one file is val and one train (given two files)."""
    if val_fraction == 0:
        return set()
    if len(ids) < 2:
        raise DataError(
            "data.split=file needs at least 2 files for a validation split; "
            "use data.split=position (the last val_fraction of the text) or data.val_fraction=0"
        )
    score = {i: int(hashlib.sha256(n.encode()).hexdigest()[:15], 16) / 16**15 for i, n in zip(ids, names)}
    val = {i for i in ids if score[i] < val_fraction}
    if not val:
        val = {min(ids, key=score.get)}
    if len(val) == len(ids):
        val.discard(max(ids, key=score.get))
    return val


# ----------------------------------------------------------------------------------------------
# images


def _prepare_images(cfg: DataConfig, kind: str, fs: pafs.FileSystem | None, files: list[SourceFile], target: _Target) -> dict:
    """Plan the items (headers only), then read, convert and write them in Ray tasks."""
    skipped: list[tuple[str, str]] = []
    plan = _image_plan(cfg, kind, fs, files, skipped)
    n = min(plan["n"], cfg.max_items) if cfg.max_items else plan["n"]
    if n == 0:
        raise DataError(f"data.source: {plan['name']} holds no images")
    c, h, w = plan["shape"]
    if not cfg.image_size and h != w:
        raise DataError(f"data.source: images are {h}x{w} (not square); set data.image_size to resize them")
    k = max(2, round(1 / cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    n_val = len(range(0, n, k)) if k else 0
    if n - n_val == 0:
        raise DataError(f"data.source: {plan['name']} has {n} image(s), too few for a training split")
    convert = {"channels": cfg.channels or c, "size": cfg.image_size or h, "k": k}

    if kind == "png":
        results = _decode_image_files(plan, n, fs, target, convert)
    else:
        step = IMAGE_PIECE_ITEMS
        pieces = [{**plan["piece"], "key": s, "start": s, "stop": min(n, s + step)} for s in range(0, n, step)]
        results = _run_pieces(pieces, _image_piece, fs=fs, target=target, convert=convert)
        _too_many_errors(_errors(results, pieces), cfg)
    splits = _gather_splits(results)
    has_labels = plan["labels"]
    num_classes = plan.get("num_classes")
    if has_labels and num_classes is None:
        lo = min(r["min_label"] for r in results)
        if lo < 0:
            raise DataError(f"data.labels: {cfg.labels or cfg.source!r} has negative labels")
        num_classes = max(r["max_label"] for r in results) + 1
    for s in SPLITS:
        splits[s]["tokens"] = None
    spec = DataSpec(modality="image", channels=convert["channels"], image_size=convert["size"], num_classes=num_classes)
    schema = {"image": {"dtype": "uint8", "shape": [convert["channels"], convert["size"], convert["size"]]}}
    if has_labels:
        schema["label"] = {"dtype": "int64", "shape": []}
    return {
        "spec": spec.model_dump(),
        "tokenizer": None,
        "schema": schema,
        "extra_columns": sorted(plan.get("extra", [])),
        "split_rule": f"by index: val = index % {k} == 0" if k else "no validation split (val_fraction = 0)",
        "splits": splits,
        "source_files": len(files) if files else 0,
        "skipped_files": _skipped(skipped),
    }


def _image_plan(cfg: DataConfig, kind: str, fs: pafs.FileSystem | None, files: list[SourceFile], skipped: list) -> dict:
    """Headers only: how many items, their [C, H, W], labels, and what a piece must read."""
    if kind == "builtin":
        size, channels = cfg.image_size or 32, cfg.channels or 1
        return {
            "n": cfg.builtin_size, "shape": (channels, size, size), "labels": True, "name": "builtin:shapes",
            "num_classes": len(builtin.SHAPE_CLASSES), "extra": ["scale", "rotation", "pos_x", "pos_y"],
            "piece": {"type": "shapes", "name": "builtin:shapes", "n": cfg.builtin_size, "size": size,
                      "channels": channels, "seed": cfg.seed},
        }
    if kind == "png":
        return _probe_image_files(cfg, fs, files, skipped)
    if kind == "parquet":
        return _parquet_image_plan(cfg, fs, files, skipped)
    f = files[0]
    if kind == "idx":
        header, dims = idx_header(fs, f, IDX_IMAGES_MAGIC, "data.source")
        if len(dims) != 3:
            raise DataError(f"data.source: {f.path!r} has idx dims {dims}; images need [N, H, W]")
        shape, piece = (1, dims[1], dims[2]), {"type": "idx", "path": f.path, "header": header, "item": dims[1:]}
        n = dims[0]
    elif kind == "npy":
        offset, arr_shape, dtype = npy_header(fs, f, "data.source")
        if dtype != np.uint8:
            raise DataError(f"data.source: {f.path!r} has dtype {dtype}; images must be uint8")
        if len(arr_shape) == 3:
            layout, shape = "nhw", (1, *arr_shape[1:])
        elif len(arr_shape) == 4 and arr_shape[1] in (1, 3):
            layout, shape = "nchw", arr_shape[1:]
        elif len(arr_shape) == 4 and arr_shape[3] in (1, 3):
            layout, shape = "nhwc", (arr_shape[3], arr_shape[1], arr_shape[2])
        else:
            raise DataError(f"data.source: {f.path!r} has shape {arr_shape}; expected [N,H,W], [N,C,H,W] or [N,H,W,C]")
        piece = {"type": "npy", "path": f.path, "offset": offset, "shape": list(arr_shape), "dtype": str(dtype), "layout": layout}
        n = arr_shape[0]
    else:
        raise DataError(f"data.kind: unknown kind {kind!r}")
    piece["name"] = f.name
    plan = {"n": n, "shape": tuple(shape), "labels": False, "name": f.name, "piece": piece}
    if cfg.labels:
        plan["labels"] = True
        plan["piece"]["labels"] = _labels_plan(cfg.labels, n)
    return plan


def _labels_plan(location: str, n: int) -> dict:
    """How a piece reads its labels from an idx or .npy labels file (count checked here)."""
    fs, files = list_files(location, "data.labels")
    f = files[0]
    if f.name.lower().endswith(".npy"):
        offset, shape, dtype = npy_header(fs, f, "data.labels")
        if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
            raise DataError(f"data.labels: {f.path!r} must be a 1-D integer array, got {dtype} {shape}")
        count, plan = shape[0], {"type": "npy", "offset": offset, "shape": list(shape), "dtype": str(dtype)}
    else:
        header, dims = idx_header(fs, f, IDX_LABELS_MAGIC, "data.labels")
        count, plan = dims[0], {"type": "idx", "header": header}
    if count != n:
        raise DataError(f"data.labels: {f.path!r} has {count} labels for {n} images")
    return {**plan, "path": f.path, "location": location}


def _parquet_image_plan(cfg: DataConfig, fs: pafs.FileSystem, files: list[SourceFile], skipped: list) -> dict:
    """Parquet images: one piece per row group; every file's footer is checked here."""
    image_col, label_col = cfg.columns.get("image", "image"), cfg.columns.get("label", "label")
    groups, shape, first, has_label = [], None, None, None
    for f in files:
        try:
            schema, row_groups = parquet_schema(fs, f)
            if image_col not in schema.names:
                raise DataError(
                    f"data.source: {f.name} has columns {schema.names}; data.modality='image' needs a {image_col!r} "
                    "column (map another one with data.columns: {image: NAME})"
                )
            typ = schema.field(image_col).type
            item = getattr(typ, "shape", None)
            value = getattr(getattr(typ, "storage_type", None), "value_type", None)
            if item is None or len(item) not in (2, 3) or str(getattr(value, "value_type", value)) != "uint8":
                raise DataError(f"data.source: {f.name}: column {image_col!r} ({typ}) must be a uint8 tensor column [H,W] or [C,H,W]")
            item = (1, *item) if len(item) == 2 else tuple(item)
            if shape is not None and item != shape:
                raise DataError(f"data.source: images differ in shape: {first} holds {list(shape)}, {f.name} holds {list(item)}")
            labelled = label_col in schema.names
            if has_label is not None and labelled != has_label:
                raise DataError(f"data.source: {f.name} and {first} disagree on having a {label_col!r} column")
        except DataError as e:
            if not cfg.skip_bad_files:
                raise
            skipped.append((f.name, str(e)))
            continue
        shape, first, has_label = item, first or f.name, labelled
        groups += [(f, i, rows) for i, rows in enumerate(row_groups)]
    if shape is None:
        raise DataError(f"data.source: no readable Parquet file in {cfg.source!r}")
    starts = np.cumsum([0] + [rows for *_, rows in groups]).tolist()
    table = [[f.path, f.name, i, s] for (f, i, _), s in zip(groups, starts)]
    return {
        "n": starts[-1], "shape": shape, "labels": has_label, "name": str(cfg.source),
        "piece": {"type": "parquet", "name": str(cfg.source), "groups": table, "image_col": image_col,
                  "label_col": label_col if has_label else None},
    }


def _read_items(piece: dict, fs: pafs.FileSystem | None) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """Items [start, stop) of an image source: (uint8 [n, C, H, W], int64 labels or None, extra columns)."""
    start, stop, t = piece["start"], piece["stop"], piece["type"]
    extra: dict[str, np.ndarray] = {}
    labels = None
    if t == "shapes":
        images, factors = builtin.make_shapes(piece["n"], size=piece["size"], channels=piece["channels"], seed=piece["seed"], items=range(start, stop))
        labels = factors.pop("label")
        extra = factors
    elif t == "idx":
        images = read_idx_items(fs, piece["path"], piece["header"], piece["item"], start, stop)[:, None]
    elif t == "npy":
        arr = read_npy_items(fs, piece["path"], piece["offset"], piece["shape"], piece["dtype"], start, stop)
        images = {"nhw": lambda a: a[:, None], "nchw": lambda a: a, "nhwc": lambda a: a.transpose(0, 3, 1, 2)}[piece["layout"]](arr)
    elif t == "parquet":
        images, labels = _read_parquet_items(piece, fs, start, stop)
    else:
        raise ValueError(f"unknown piece type {t!r}")
    if "labels" in piece:
        lab = piece["labels"]
        lfs = open_location(lab["location"], "data.labels")[0]
        if lab["type"] == "npy":
            labels = read_npy_items(lfs, lab["path"], lab["offset"], lab["shape"], lab["dtype"], start, stop)
        else:
            labels = read_idx_items(lfs, lab["path"], lab["header"], [], start, stop)
        labels = labels.astype(np.int64)
    return np.ascontiguousarray(images), labels, extra


def _read_parquet_items(piece: dict, fs: pafs.FileSystem, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows [start, stop) of Parquet image files, read row group by row group."""
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (tensor extension types)

    cols = [piece["image_col"]] + ([piece["label_col"]] if piece["label_col"] else [])
    images, labels = [], []
    groups = piece["groups"]
    for j, (path, name, group, first) in enumerate(groups):
        last = groups[j + 1][3] if j + 1 < len(groups) else None
        if first >= stop or (last is not None and last <= start):
            continue
        try:
            with fs.open_input_file(path) as fh:
                table = pq.ParquetFile(fh).read_row_group(group, columns=cols)
            lo, hi = max(start - first, 0), min(stop - first, table.num_rows)
            table = table.slice(lo, hi - lo)
            arr = np.concatenate([c.to_numpy() for c in table.column(cols[0]).chunks])
        except Exception as e:  # noqa: BLE001  (pyarrow raises many kinds for a damaged file)
            raise DataError(f"data.source: {name}: cannot read row group {group} ({first_line(e)})") from None
        if arr.dtype != np.uint8:
            raise DataError(f"data.source: {name}: column {cols[0]!r} holds {arr.dtype}, images must be uint8")
        images.append(arr if arr.ndim == 4 else arr[:, None])
        if piece["label_col"]:
            labels.append(table.column(cols[1]).to_numpy().astype(np.int64))
    return np.concatenate(images), (np.concatenate(labels) if labels else None)


def _image_piece(piece: dict, fs: pafs.FileSystem | None, target: _Target, convert: dict) -> dict:
    """Read, convert and write one range of images."""
    images, labels, extra = _read_items(piece, fs)
    return _convert_and_write(piece["start"], images, labels, extra, target, convert)


def _convert_and_write(start: int, images: np.ndarray, labels: np.ndarray | None, extra: dict, target: _Target, convert: dict) -> dict:
    """data.channels and data.image_size applied, rows split by index, shards written."""
    images = _to_channels(images, convert["channels"])
    if images.shape[2:] != (convert["size"], convert["size"]):
        images = _resize(images, convert["size"])
    columns = {"image": np.ascontiguousarray(images)}
    if labels is not None:
        columns["label"] = labels
    columns.update(extra)
    index = np.arange(start, start + len(images))
    is_val = index % convert["k"] == 0 if convert["k"] else np.zeros(len(images), dtype=bool)
    splits = {}
    for split, mask in (("train", ~is_val), ("val", is_val)):
        part = {c: v[mask] for c, v in columns.items()}
        splits[split] = {"rows": int(mask.sum()), "files": _write_shards(target, split, start, part)}
    out = {"splits": splits}
    if labels is not None and len(labels):
        out.update(min_label=int(labels.min()), max_label=int(labels.max()))
    return out


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """[N, C, H, W] -> [N, channels, H, W]: gray repeats, RGB -> gray uses ITU-R 601 luma."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    luma = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), images.astype(np.float32), axes=([0], [1]))
    return np.rint(luma)[:, None].astype(np.uint8)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize [N, C, H, W] uint8 to [N, C, size, size] with Pillow (anti-aliased bilinear)."""
    from PIL import Image

    n, c = images.shape[:2]
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):
            out[i, ch] = np.asarray(Image.fromarray(images[i, ch]).resize((size, size), Image.Resampling.BILINEAR))
    return out


# image files (PNG / JPEG): a header pass, then ray.data.read_images


def _probe_image_files(cfg: DataConfig, fs: pafs.FileSystem, files: list[SourceFile], skipped: list) -> dict:
    """Check every file's header in Ray tasks; sizes and modes must agree unless data.image_size /
    data.channels say how to convert; class sub-folders give labels."""
    root = sources_of(cfg)[0]
    if cfg.max_items:
        files = files[: cfg.max_items]
    pieces = [
        {"key": s, "paths": [f.path for f in files[s : s + PROBE_PIECE_FILES]], "name": files[s].name}
        for s in range(0, len(files), PROBE_PIECE_FILES)
    ]
    facts = [fact for r in _run_pieces(pieces, _probe_piece, fs=fs) for fact in r["facts"]]
    good = []
    bad = [(f.name, fact["error"]) for f, fact in zip(files, facts) if "error" in fact]
    if bad and not cfg.skip_bad_files:
        more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
        raise DataError(
            f"data.source: {bad[0][0]} in {root!r} cannot be read: {bad[0][1]}{more}; fix or remove it, "
            "or set data.skip_bad_files=true to skip bad files"
        )
    skipped += bad
    good = [(f, fact) for f, fact in zip(files, facts) if "error" not in fact]
    if not good:
        raise DataError(f"data.source: no readable image in {root!r}")
    (f0, a) = good[0]
    if cfg.image_size is None:
        other = next(((f, b) for f, b in good if (b["w"], b["h"]) != (a["w"], a["h"])), None)
        if other:
            f1, b = other
            raise DataError(
                f"data.source: images in {root!r} have different sizes, e.g. {f0.name} is {a['w']}x{a['h']} and "
                f"{f1.name} is {b['w']}x{b['h']}; set data.image_size to resize them all"
            )
    gray = [fact["mode"] in GRAY_MODES for _, fact in good]
    if cfg.channels is None and len(set(gray)) > 1:
        g = next(f for (f, _), is_g in zip(good, gray) if is_g)
        col = next((f, fact) for (f, fact), is_g in zip(good, gray) if not is_g)
        raise DataError(
            f"data.source: images in {root!r} mix grayscale and colour, e.g. {g.name} is grayscale and "
            f"{col[0].name} is {col[1]['mode']}; set data.channels to 1 or 3 to convert them all"
        )
    channels = cfg.channels or (1 if gray[0] else 3)
    labels = None
    names = [f.name for f, _ in good]
    if all("/" in n for n in names):
        classes = sorted({n.split("/", 1)[0] for n in names})
        labels = [classes.index(n.split("/", 1)[0]) for n in names]
    return {
        "n": len(good), "shape": (channels, a["h"], a["w"]), "labels": labels is not None, "name": root,
        "num_classes": len(set(labels)) if labels else None, "files": [f.path for f, _ in good], "label_list": labels,
    }


def _probe_piece(piece: dict, fs: pafs.FileSystem) -> dict:
    """Header facts of a batch of image files."""
    return {"facts": [probe_image(fs, p) for p in piece["paths"]]}


def _decode_image_files(plan: dict, n: int, fs: pafs.FileSystem, target: _Target, convert: dict) -> list[dict]:
    """`ray.data.read_images` over the checked files, then convert and write in map_batches."""
    import ray.data

    paths = plan["files"][:n]
    mode = "L" if convert["channels"] == 1 else "RGB"
    index = {p: i for i, p in enumerate(paths)}
    labels = plan["label_list"][:n] if plan["label_list"] else None
    ds = ray.data.read_images(paths, filesystem=fs, mode=mode, include_paths=True)
    ds = ds.map_batches(
        _image_files_batch, batch_size=1024, batch_format="numpy",
        fn_kwargs={"index": index, "labels": labels, "target": target, "convert": convert},
    )
    try:
        rows = ds.take_all()
    except Exception as e:  # noqa: BLE001  (a file that passed the header check but fails to decode)
        raise DataError(f"data.source: decoding the images in {plan['name']!r} failed: {first_line(e)}") from None
    return sorted((json.loads(r["result"]) for r in rows), key=lambda r: r["key"])


def _image_files_batch(batch: dict[str, np.ndarray], index: dict, labels: list | None, target: _Target, convert: dict) -> dict:
    """map_batches UDF: decoded images [n, H, W(, 3)] + paths -> shards, one per run of consecutive indices."""
    idx = np.array([index[p] for p in batch["path"]])
    order = np.argsort(idx)
    idx = idx[order]
    images = np.stack([batch["image"][i] for i in order])
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    out = []
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(np.arange(len(idx)), cuts):
        first = int(idx[run[0]])
        lab = np.array([labels[i] for i in idx[run]], dtype=np.int64) if labels else None
        result = _convert_and_write(first, images[run], lab, {}, target, convert)
        result["key"] = first
        out.append(json.dumps(result))
    return {"result": np.array(out, dtype=object)}


# ----------------------------------------------------------------------------------------------
# manifest, publishing


def _read_manifest(fs: pafs.FileSystem, root: str) -> dict[str, Any] | None:
    """manifest.json of a folder, or None when absent or unreadable."""
    try:
        with fs.open_input_stream(f"{root}/manifest.json") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _write_manifest(fs: pafs.FileSystem, root: str, manifest: dict) -> None:
    """Write manifest.json into a folder (the last file of a preparation)."""
    fs.create_dir(root, recursive=True)
    for split in SPLITS:
        fs.create_dir(f"{root}/{split}", recursive=True)
    with fs.open_output_stream(f"{root}/manifest.json") as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


def _missing_shards(fs: pafs.FileSystem, root: str, manifest: dict) -> list[str]:
    """Shards the manifest lists that are not there."""
    names = [f for split in SPLITS for f in manifest["splits"][split]["files"]]
    infos = fs.get_file_info([f"{root}/{f}" for f in names]) if names else []
    return [n for n, i in zip(names, infos) if i.type != pafs.FileType.File]


def _has_files(fs: pafs.FileSystem, root: str) -> bool:
    """True when a folder exists and holds anything."""
    try:
        return bool(fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)))
    except OSError:
        return False


def _up_to_date(fs: pafs.FileSystem, root: str, checksum: str, config_used: dict[str, Any]) -> bool:
    """True when `root` holds a complete preparation of this exact source and config."""
    m = _read_manifest(fs, root)
    if m is None or m.get("format") != FORMAT or m.get("source_sha256") != checksum or m.get("config") != config_used:
        return False
    return not _missing_shards(fs, root, m)


def _remove(fs: pafs.FileSystem, root: str) -> None:
    """Delete a folder if it exists (best effort)."""
    try:
        if fs.get_file_info(root).type == pafs.FileType.Directory:
            fs.delete_dir(root)
    except OSError:
        pass


def _publish(fs: pafs.FileSystem, tmp: str, out: str, checksum: str, config_used: dict[str, Any]) -> None:
    """Put the finished temporary folder in place of `out`."""
    if isinstance(fs, pafs.LocalFileSystem):
        _move_into_place(Path(tmp), Path(out), checksum, config_used)
        return
    # an object store has no atomic rename: retire the old manifest, replace the shards, manifest last
    try:
        fs.delete_file(f"{out}/manifest.json")
    except (OSError, FileNotFoundError):
        pass
    for split in SPLITS:
        _remove(fs, f"{out}/{split}")
        infos = fs.get_file_info(pafs.FileSelector(f"{tmp}/{split}", allow_not_found=True))
        for i in infos:
            fs.move(i.path, f"{out}/{split}/{i.base_name}")
    fs.move(f"{tmp}/manifest.json", f"{out}/manifest.json")
    _remove(fs, tmp)


def _move_into_place(tmp: Path, out: Path, checksum: str, config_used: dict[str, Any]) -> None:
    """Rename tmp to out, replacing a stale out; if a concurrent run won the race, keep theirs."""
    import shutil

    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if not _up_to_date(pafs.LocalFileSystem(), str(out), checksum, config_used):
            if old is not None and not out.exists():
                os.rename(old, out)  # put the previous version back
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run just wrote the same data
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
