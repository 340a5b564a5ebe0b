"""Where data comes from: locate a source (local path, folder, glob or URI) and read pieces of it.

    builtin:python-docs | builtin:shapes      embedded (see builtin.py)
    text file(s), a folder or a glob          UTF-8 text (the byte tokenizer takes any bytes)
    Parquet file(s) or folder                 a string column "text", or an "image" tensor column (+ "label")
    MNIST-style idx images (+ labels)         gz or raw; magic 2051 (images) / 2049 (labels)
    a folder of PNG/JPEG images               class sub-folders become labels (ImageFolder style)
    .npy array                                uint8 [N,H,W], [N,C,H,W] or [N,H,W,C] (+ labels .npy or idx)

Every location goes through `creagen_ray.storage.resolve` (a `pyarrow.fs` filesystem + path), so
`s3://`, `gs://` and local paths read alike. The driver only lists files and reads headers; the
bytes are read in Ray tasks (prepare.py) by the functions at the end of this module, each given
the filesystem and a small description of its piece. Every failure is a `DataError` naming the
`data.*` field and the offending file or URI.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from creagen_ray.config import ConfigError, DataConfig
from creagen_ray.data import builtin
from creagen_ray.storage import StorageError, describe_error, is_uri, resolve

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GLOB_CHARS = "*?["
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}


class DataError(ConfigError):
    """A data source that cannot be prepared (missing, empty, malformed, inconsistent)."""


@dataclass(frozen=True)
class SourceFile:
    """One file of a source: its path inside the filesystem, a display name, its size in bytes."""

    path: str
    name: str
    size: int


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (pyarrow and PIL messages can run long)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------
# locating a source


def sources_of(cfg: DataConfig) -> list[str]:
    """`data.source` as a list of locations."""
    return list(cfg.source) if isinstance(cfg.source, list) else [cfg.source]


def open_location(location: str, field_name: str = "data.source") -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a location; an unknown scheme or unreachable store is a DataError."""
    try:
        return resolve(location)
    except StorageError as e:
        raise DataError(f"{field_name}: {e}") from None


def list_files(location: str, field_name: str = "data.source") -> tuple[pafs.FileSystem, list[SourceFile]]:
    """A file, a folder (recursive; hidden files skipped) or a glob -> its files, sorted by name."""
    pattern = None
    if any(c in location for c in GLOB_CHARS):
        cut = min(location.find(c) for c in GLOB_CHARS if c in location)
        base = location[: location.rfind("/", 0, cut) + 1] or "."
        fs, base_path = open_location(base, field_name)
        pattern = base_path.rstrip("/") + "/" + location[len(base) :].lstrip("/")
        path = base_path
    else:
        fs, path = open_location(location, field_name)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{field_name}: {location!r} {_not_found(fs, path, location)}")
        if info.type == pafs.FileType.File and pattern is None:
            return fs, [SourceFile(path, path.rsplit("/", 1)[-1], info.size)]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except DataError:
        raise
    except (OSError, ValueError) as e:
        if is_uri(location):  # access denied, no credentials, ...: say why and where credentials come from
            raise DataError(f"{field_name}: {describe_error(location, 'read', e)}") from None
        raise DataError(f"{field_name}: cannot read {location!r} ({first_line(e)})") from None
    root = path.rstrip("/") + "/"
    files = []
    for i in infos:
        rel = i.path[len(root) :] if i.path.startswith(root) else i.base_name
        if i.type != pafs.FileType.File or any(part.startswith(".") for part in rel.split("/")):
            continue
        if pattern is not None and not fnmatch.fnmatchcase(i.path, pattern):
            continue
        files.append(SourceFile(i.path, rel, i.size))
    if not files:
        what = f"matches no files" if pattern else "is an empty folder or prefix (no files under it)"
        raise DataError(f"{field_name}: {location!r} {what}")
    return fs, sorted(files, key=lambda f: f.name)


def _not_found(fs: pafs.FileSystem, path: str, location: str) -> str:
    """Why a location is missing: no such file, no such bucket, or (object stores) nothing under a prefix."""
    if not is_uri(location):
        return "does not exist"
    bucket = path.strip("/").split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            return f"does not exist: the bucket {bucket!r} does not exist"
    except (OSError, ValueError):
        pass
    return "does not exist: no object and no objects under that prefix (an empty or mistyped prefix)"


def guess_kind(cfg: DataConfig, files: list[SourceFile] | None) -> str:
    """`cfg.kind`, or for "auto" a guess from the source: builtin|text|parquet|idx|png|npy."""
    if cfg.kind != "auto":
        return cfg.kind
    first = sources_of(cfg)[0]
    if first.startswith("builtin:"):
        return "builtin"
    if isinstance(cfg.source, list) or not files:
        return "text"
    names = [f.name.lower() for f in files]
    if len(files) > 1 or any(c in first for c in GLOB_CHARS) or files[0].name != first.rstrip("/").rsplit("/", 1)[-1]:
        # a folder, prefix or glob: named by what it holds
        if any(n.endswith(".parquet") for n in names):
            return "parquet"
        if any(n.endswith(IMAGE_SUFFIXES) for n in names):
            return "png"
        return "text"
    name = names[0]
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".parquet"):
        return "parquet"
    if "idx" in name or "ubyte" in name:
        return "idx"
    return "text"


def locate(cfg: DataConfig) -> tuple[str, pafs.FileSystem | None, list[SourceFile]]:
    """(kind, filesystem, files) of `data.source`; a builtin has no filesystem and no files."""
    sources = sources_of(cfg)
    if sources[0].startswith("builtin:"):
        builtin_name(cfg)
        return "builtin", None, []
    fs, files = None, []
    for location in sources:
        fs_i, files_i = list_files(location)
        if fs is not None and type(fs_i) is not type(fs):
            raise DataError(f"data.source: {location!r} is on another filesystem than {sources[0]!r}")
        fs = fs_i
        if len(sources) > 1:  # a list: display names relative to nothing, so they stay distinct
            files_i = [SourceFile(f.path, f.path.rsplit("/", 1)[-1] if len(files_i) == 1 else f.path, f.size) for f in files_i]
        files.extend(files_i)
    kind = guess_kind(cfg, files)
    if isinstance(cfg.source, list) and kind not in ("text", "parquet"):
        raise DataError(f"data.source: a list of sources is only supported for text or Parquet, not {kind}")
    suffix = {"parquet": (".parquet",), "png": IMAGE_SUFFIXES}.get(kind)
    if suffix and len(files) > 1:
        files = [f for f in files if f.name.lower().endswith(suffix)]
        if not files:
            raise DataError(f"data.source: {', '.join(sources)} holds no {'/'.join(suffix)} files")
    if kind in ("idx", "npy") and len(files) != 1:
        raise DataError(f"data.source: kind {kind} needs one file, {sources[0]!r} holds {len(files)}")
    if cfg.labels and kind not in ("idx", "npy"):
        raise DataError(f"data.labels: only idx and npy sources take a labels file (source kind is {kind})")
    return kind, fs, files


def builtin_name(cfg: DataConfig) -> str:
    """`builtin:NAME` -> NAME, checked against the known builtins."""
    src = cfg.source if isinstance(cfg.source, str) else ""
    name = src.removeprefix("builtin:")
    if not src.startswith("builtin:") or name not in builtin.BUILTINS:
        choices = ", ".join(f"builtin:{b}" for b in builtin.BUILTINS)
        raise DataError(f"data.source: unknown builtin {src!r}; choose one of {choices}")
    return name


def source_checksum(cfg: DataConfig, kind: str, fs: pafs.FileSystem | None, files: list[SourceFile]) -> str:
    """sha256 of the source: of the file's bytes for one file (= `sha256sum FILE`), else of every
    file's display name and bytes in order (folders, lists, a labels file). Streamed: the driver
    holds one 1 MiB block at a time."""
    if kind == "builtin":
        name = builtin_name(cfg)
        return hashlib.sha256(f"builtin:{name}:{builtin.builtin_checksum(name)}".encode()).hexdigest()
    todo = [(fs, f) for f in files]
    if cfg.labels:
        lfs, lfiles = list_files(cfg.labels, "data.labels")
        todo += [(lfs, f) for f in lfiles]
    h = hashlib.sha256()
    for fs_i, f in todo:
        if len(todo) > 1:
            h.update(f.name.encode() + b"\0")
        try:
            with fs_i.open_input_stream(f.path) as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            raise DataError(f"data.source: cannot read {f.path!r} ({first_line(e)})") from None
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# headers, read on the driver (a few bytes per file)


@functools.lru_cache(maxsize=1)
def python_docs_bytes() -> bytes:
    """builtin:python-docs as UTF-8 bytes (deterministic for a Python version)."""
    return builtin.python_docs_text().encode("utf-8")


def read_range(fs: pafs.FileSystem | None, path: str, start: int, length: int) -> bytes:
    """`length` bytes of a file from `start` (fewer at its end); builtin:python-docs is a file too."""
    if path == "builtin:python-docs":
        return python_docs_bytes()[start : start + length]
    with fs.open_input_file(path) as f:
        return f.read_at(length, start)


def is_gzip(fs: pafs.FileSystem, path: str) -> bool:
    """True when a file starts with the gzip magic bytes."""
    return read_range(fs, path, 0, 2) == b"\x1f\x8b"


def read_stream_range(fs: pafs.FileSystem, path: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of a possibly gzipped file (a gz stream is decompressed up to there)."""
    if not is_gzip(fs, path):
        return read_range(fs, path, start, length)
    with fs.open_input_stream(path, compression="gzip") as f:
        skip = start
        while skip:
            got = len(f.read(min(skip, 1 << 22)))
            if not got:
                break
            skip -= got
        return f.read(length)


def idx_header(fs: pafs.FileSystem, f: SourceFile, magic: int, field_name: str) -> tuple[int, list[int]]:
    """(header bytes, dims) of an idx file; checks the magic number (and the size of a raw file)."""
    try:
        head = read_stream_range(fs, f.path, 0, 4 + 4 * 4)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{field_name}: {f.path!r}: broken gzip or unreadable file ({first_line(e)})") from None
    if len(head) < 8:
        raise DataError(f"{field_name}: {f.path!r} is too short to be an idx file ({len(head)} bytes)")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        what = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        hint = f" (that is an idx {what[got]} file)" if got in what else ""
        raise DataError(f"{field_name}: {f.path!r} has idx magic number {got}{hint}; expected {magic} for idx {what[magic]}")
    ndim = head[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if not is_gzip(fs, f.path) and f.size != header + int(np.prod(dims)):
        raise DataError(f"{field_name}: {f.path!r} holds {f.size - header} bytes of data, dims {dims} need {int(np.prod(dims))}")
    return header, dims


def npy_header(fs: pafs.FileSystem, f: SourceFile, field_name: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(data offset, shape, dtype) of a .npy file, read from its header; object arrays are refused
    (they would need pickle, which is never used on data files)."""
    try:
        head = read_range(fs, f.path, 0, 1 << 16)
        fh = io.BytesIO(head)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{field_name}: {f.path!r} is not a readable .npy file ({first_line(e)})") from None
    if dtype.hasobject:
        raise DataError(
            f"{field_name}: {f.path!r} holds Python objects (dtype {dtype}); loading it would need pickle, "
            "which is refused (allow_pickle=False): save a numeric array"
        )
    if fortran and len(shape) > 1:
        raise DataError(f"{field_name}: {f.path!r} is Fortran-ordered; save it with np.save(np.ascontiguousarray(a))")
    offset = fh.tell()
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if f.size < need:
        raise DataError(f"{field_name}: {f.path!r} is truncated: {f.size} bytes, its header needs {need}")
    return offset, tuple(shape), dtype


def parquet_schema(fs: pafs.FileSystem, f: SourceFile) -> tuple[Any, list[int]]:
    """(arrow schema, rows per row group) of a Parquet file, from its footer."""
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (registers Ray's tensor extension types with pyarrow)

    try:
        with fs.open_input_file(f.path) as fh:
            meta = pq.ParquetFile(fh).metadata
            return meta.schema.to_arrow_schema(), [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except Exception as e:  # noqa: BLE001  (pyarrow raises ArrowInvalid, OSError, ...: all mean "not Parquet")
        raise DataError(f"data.source: {f.path!r} is not a readable Parquet file ({first_line(e)})") from None


# ----------------------------------------------------------------------------------------------
# pieces, read inside Ray tasks


def _utf8_boundary(raw: bytes, i: int) -> int:
    """The first index >= i that starts a UTF-8 character (skips at most 3 continuation bytes)."""
    for _ in range(3):
        if i < len(raw) and 0x80 <= raw[i] < 0xC0:
            i += 1
    return i


def read_text_piece(fs: pafs.FileSystem | None, unit: dict) -> tuple[bytes, bytes, int]:
    """(own bytes, following bytes, file offset of own) of a byte range of a text file.

    Char pieces start and end on UTF-8 character boundaries (the same rule on both sides of a cut,
    so neighbours tile the file); `following` holds up to unit["overlap"] characters past the end,
    for windows that start in this piece and end in the next.
    """
    size, a0, b0, overlap = unit["size"], unit["start"], unit["end"], unit["overlap"]
    if unit["tokenizer"] == "byte":
        raw = read_range(fs, unit["path"], a0, min(size, b0 + overlap) - a0)
        return raw[: b0 - a0], raw[b0 - a0 :], a0
    hi = min(size, b0 + 3 + 4 * overlap + 3)
    raw = read_range(fs, unit["path"], a0, hi - a0)
    a = _utf8_boundary(raw, 0) if a0 > 0 else 0
    b = _utf8_boundary(raw, b0 - a0) if b0 < size else len(raw)
    tail = raw[b:]
    if hi < size:  # drop a character cut by the read
        k = len(tail)
        while k > 0 and 0x80 <= tail[k - 1] < 0xC0:
            k -= 1
        tail = tail[: max(k - 1, 0)] if k > 0 and tail[k - 1] >= 0xC0 else tail[:k]
    return raw[a:b], tail, a0 + a


def read_parquet_text(fs: pafs.FileSystem, path: str, column: str) -> bytes:
    """The non-empty strings of a Parquet string column, joined by newlines, as UTF-8."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[column], filesystem=fs)
    return "\n".join(s for s in table.column(column).to_pylist() if s).encode("utf-8")


def read_idx_items(fs: pafs.FileSystem, path: str, header: int, item_shape: list[int], start: int, stop: int) -> np.ndarray:
    """Items [start, stop) of an idx file as uint8 [n, *item_shape]."""
    item = int(np.prod(item_shape)) if item_shape else 1
    raw = read_stream_range(fs, path, header + start * item, (stop - start) * item)
    if len(raw) != (stop - start) * item:
        raise DataError(f"{path!r} is truncated: items {start}..{stop} need {(stop - start) * item} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8).reshape([stop - start, *item_shape])


def read_npy_items(fs: pafs.FileSystem, path: str, offset: int, shape: list[int], dtype: str, start: int, stop: int) -> np.ndarray:
    """Items [start, stop) of a C-ordered .npy file (header already checked on the driver)."""
    dt = np.dtype(dtype)
    item = int(np.prod(shape[1:])) * dt.itemsize if len(shape) > 1 else dt.itemsize
    raw = read_range(fs, path, offset + start * item, (stop - start) * item)
    return np.frombuffer(raw, dtype=dt).reshape([stop - start, *shape[1:]])


def probe_image(fs: pafs.FileSystem, path: str) -> dict:
    """Header facts of one image file, or the reason it cannot be read: {"w", "h", "mode"} | {"error"}.

    For PNG, `verify()` walks the whole file (chunk CRCs, truncation) without decoding the pixels.
    """
    from PIL import Image

    try:
        with fs.open_input_file(path) as fh:
            raw = fh.read()
        with Image.open(io.BytesIO(raw)) as im:
            w, h, mode, fmt = im.size[0], im.size[1], im.mode, im.format
            im.verify()  # PNG: every chunk's CRC and the end of the file (a truncated file fails here)
        if fmt != "PNG":  # verify() checks little else: decode for real
            with Image.open(io.BytesIO(raw)) as im:
                im.load()
        return {"w": w, "h": h, "mode": mode}
    except Exception as e:  # noqa: BLE001  (PIL raises many types for broken files)
        reason = first_line(e).replace(str(io.BytesIO), "")
        if "cannot identify image file" in reason:
            reason = "not an image file (cannot identify its format)"
        return {"error": f"{type(e).__name__}: {reason}"}
