"""Readers for every data source `DataConfig.source` may name, into plain numpy / bytes.

    builtin:python-docs | builtin:shapes      embedded (see builtin.py)
    text file(s)                              UTF-8 text (the byte tokenizer takes any bytes)
    Parquet dir or file                       a "text" string column, or an "image" tensor column (+ "label")
    MNIST-style idx images (+ labels)         gz or raw; magic 2051 (images) / 2049 (labels)
    a folder of PNG images                    class sub-folders become labels (ImageFolder style)
    .npy array                                uint8 [N,H,W], [N,C,H,W] or [N,H,W,C] (+ labels .npy or idx)

No Ray here except the Parquet tensor type (importing `ray.data` registers it with pyarrow).
Every failure is a `DataError` naming the `data.*` field and the offending value.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from creagen_ray.config import ConfigError, DataConfig
from creagen_ray.data import builtin

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".py", ""}


class DataError(ConfigError):
    """A data source that cannot be prepared (missing, empty, malformed, inconsistent)."""


@dataclass
class TextData:
    """A text corpus as raw bytes (decoded by the tokenizer step, which knows if it needs UTF-8)."""

    raw: bytes
    name: str
    modality: str = "text"


@dataclass
class ImageData:
    """Images as uint8 [N, C, H, W] with optional int64 labels and extra per-item columns."""

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    num_classes: int | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    modality: str = "image"


# ----------------------------------------------------------------------------------------------
# which kind of source, and its checksum


def source_paths(cfg: DataConfig) -> list[Path]:
    """The source as a list of paths (a builtin has none)."""
    sources = cfg.source if isinstance(cfg.source, list) else [cfg.source]
    return [Path(s).expanduser() for s in sources if not s.startswith("builtin:")]


def guess_kind(cfg: DataConfig) -> str:
    """`cfg.kind`, or for "auto" a guess from the source's name: builtin|text|parquet|idx|png|npy."""
    if cfg.kind != "auto":
        return cfg.kind
    if isinstance(cfg.source, list):
        return "text"
    src = cfg.source
    if src.startswith("builtin:"):
        return "builtin"
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(f"data.source: {src!r} does not exist")
    if path.is_dir():
        if any(path.rglob("*.parquet")):
            return "parquet"
        if any(p.suffix.lower() == ".png" for p in path.rglob("*")):
            return "png"
        raise DataError(f"data.source: folder {src!r} holds no .parquet or .png files")
    name = path.name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".parquet"):
        return "parquet"
    if "idx" in name or "ubyte" in name:
        return "idx"
    return "text"


def _files_of(kind: str, path: Path, field_name: str = "data.source") -> list[Path]:
    """The files whose bytes make up a source (sorted, so the checksum is stable)."""
    if not path.exists():
        raise DataError(f"{field_name}: {str(path)!r} does not exist")
    if path.is_file():
        return [path]
    suffix = {"parquet": ".parquet", "png": ".png"}.get(kind)
    if suffix is None:
        raise DataError(f"{field_name}: {str(path)!r} is a folder, but kind {kind!r} needs a file")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == suffix)


def source_checksum(cfg: DataConfig, kind: str) -> str:
    """sha256 of the source: of the file's bytes for one file (= `sha256sum FILE`), else of every
    file's relative name and bytes in sorted order (folders, lists, a labels file)."""
    if kind == "builtin":
        name = builtin_name(cfg)
        return hashlib.sha256(f"builtin:{name}:{builtin.builtin_checksum(name)}".encode()).hexdigest()
    roots = [(p, "data.source") for p in source_paths(cfg)]
    if cfg.labels:
        roots.append((Path(cfg.labels).expanduser(), "data.labels"))
    files = [
        (f, f.relative_to(root) if f != root else f.name)
        for root, field_name in roots
        for f in _files_of(kind, root, field_name)
    ]
    h = hashlib.sha256()
    for f, name in files:
        if len(files) > 1:
            h.update(str(name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def builtin_name(cfg: DataConfig) -> str:
    """`builtin:NAME` -> NAME, checked against the known builtins."""
    src = cfg.source if isinstance(cfg.source, str) else ""
    name = src.removeprefix("builtin:")
    if not src.startswith("builtin:") or name not in builtin.BUILTINS:
        choices = ", ".join(f"builtin:{b}" for b in builtin.BUILTINS)
        raise DataError(f"data.source: unknown builtin {src!r}; choose one of {choices}")
    return name


# ----------------------------------------------------------------------------------------------
# readers


def read_source(cfg: DataConfig, kind: str) -> TextData | ImageData:
    """Read `cfg.source` as `kind` into memory (images are converted by `finish_images`)."""
    if kind == "builtin":
        name = builtin_name(cfg)
        if name == "python-docs":
            return TextData(builtin.python_docs_text().encode("utf-8"), "builtin:python-docs")
        images, factors = builtin.make_shapes(
            cfg.builtin_size, size=cfg.image_size or 32, channels=cfg.channels or 1, seed=cfg.seed
        )
        labels = factors.pop("label")
        return ImageData(images, labels, "builtin:shapes", len(builtin.SHAPE_CLASSES), extra=factors)
    if kind == "text":
        return read_text_files(source_paths(cfg))
    if cfg.labels and kind in ("parquet", "png"):
        raise DataError(f"data.labels: only idx and npy sources take a labels file (source kind is {kind})")
    readers = {"parquet": read_parquet_source, "idx": read_idx_source, "png": read_png_folder, "npy": read_npy_source}
    if kind not in readers:
        raise DataError(f"data.kind: unknown kind {kind!r}")
    if isinstance(cfg.source, list):
        raise DataError(f"data.source: a list of sources is only supported for text files, not {kind}")
    return readers[kind](cfg)


def read_text_files(paths: list[Path]) -> TextData:
    """Concatenate text files (a newline goes between files that do not end with one)."""
    if not paths:
        raise DataError("data.source: no text files given")
    parts = []
    for p in paths:
        if not p.is_file():
            raise DataError(f"data.source: text file {str(p)!r} does not exist")
        raw = p.read_bytes()
        if parts and not parts[-1].endswith(b"\n"):
            parts.append(b"\n")
        parts.append(raw)
    raw = b"".join(parts)
    if not raw.strip():
        raise DataError(f"data.source: the text corpus {', '.join(map(str, paths))} is empty")
    return TextData(raw, ", ".join(p.name for p in paths))


def decode_utf8(raw: bytes, name: str) -> str:
    """Strict UTF-8 decoding with an error that says where the bad byte is and what to do."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start : e.start + 1].hex()
        raise DataError(
            f"data.source: {name} is not valid UTF-8 (byte 0x{bad} at offset {e.start}); "
            "convert it to UTF-8, or set data.tokenizer=byte to train on raw bytes"
        ) from None


def _open_maybe_gz(path: Path) -> bytes:
    """The bytes of a file, gunzipped when it is a gzip file."""
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{str(path)!r}: broken gzip file ({e})") from None
    return raw


def read_idx(path: Path, magic: int, field_name: str) -> np.ndarray:
    """An idx file (MNIST format) as a uint8 array; checks the magic number and the length."""
    raw = _open_maybe_gz(path)
    if len(raw) < 8:
        raise DataError(f"{field_name}: {str(path)!r} is too short to be an idx file ({len(raw)} bytes)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        what = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        hint = f" (that is an idx {what[got]} file)" if got in what else ""
        raise DataError(
            f"{field_name}: {str(path)!r} has idx magic number {got}{hint}; "
            f"expected {magic} for idx {what[magic]}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{field_name}: {str(path)!r} holds {len(raw) - header} bytes of data, dims {dims} need {int(np.prod(dims))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_labels(path: Path, n: int) -> np.ndarray:
    """Labels (idx or .npy) for n items, as int64 [n]."""
    if path.name.lower().endswith(".npy"):
        if not path.is_file():
            raise DataError(f"data.labels: {str(path)!r} does not exist")
        labels = np.load(path, allow_pickle=False)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"data.labels: {str(path)!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    else:
        labels = read_idx(path, IDX_LABELS_MAGIC, "data.labels")
    if len(labels) != n:
        raise DataError(f"data.labels: {str(path)!r} has {len(labels)} labels for {n} images")
    if labels.min() < 0:
        raise DataError(f"data.labels: {str(path)!r} has negative labels")
    return labels.astype(np.int64)


def _with_labels(images: np.ndarray, cfg: DataConfig, name: str) -> ImageData:
    """ImageData with the labels named by `cfg.labels`, if any."""
    labels = read_labels(Path(cfg.labels).expanduser(), len(images)) if cfg.labels else None
    num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else None
    return ImageData(images, labels, name, num_classes)


def read_idx_source(cfg: DataConfig) -> ImageData:
    """MNIST-style idx images [N, H, W] (+ labels) -> ImageData [N, 1, H, W]."""
    path = Path(cfg.source).expanduser()
    images = read_idx(path, IDX_IMAGES_MAGIC, "data.source")
    return _with_labels(images[:, None], cfg, path.name)


def read_npy_source(cfg: DataConfig) -> ImageData:
    """A uint8 .npy array [N,H,W], [N,C,H,W] or [N,H,W,C] (C in 1, 3) -> ImageData."""
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source: {str(path)!r} does not exist")
    arr = np.load(path, allow_pickle=False, mmap_mode="r")
    if arr.dtype != np.uint8:
        raise DataError(f"data.source: {str(path)!r} has dtype {arr.dtype}; images must be uint8")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[1] in (1, 3):
        pass
    elif arr.ndim == 4 and arr.shape[3] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"data.source: {str(path)!r} has shape {arr.shape}; expected [N,H,W], [N,C,H,W] or [N,H,W,C]")
    return _with_labels(np.ascontiguousarray(arr), cfg, path.name)


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}


def read_png_folder(cfg: DataConfig) -> ImageData:
    """PNG files (recursive, sorted) -> ImageData; class sub-folders give labels.

    Images must all be the same size unless `data.image_size` is set (then each is resized).
    Channels: `data.channels`, else 1 when every image is grayscale, else 3.
    """
    from PIL import Image

    root = Path(cfg.source).expanduser()
    files = _files_of("png", root)
    if not files:
        raise DataError(f"data.source: folder {str(root)!r} holds no .png files")
    if cfg.max_items:
        files = files[: cfg.max_items]
    sizes, modes = [], []
    for f in files:  # Image.open reads only the header
        with Image.open(f) as im:
            sizes.append(im.size)
            modes.append(im.mode)
    if cfg.image_size is None and len(set(sizes)) > 1:
        other = next(i for i, s in enumerate(sizes) if s != sizes[0])
        raise DataError(
            f"data.source: PNG images in {str(root)!r} have different sizes, e.g. {files[0].name} is "
            f"{sizes[0][0]}x{sizes[0][1]} and {files[other].name} is {sizes[other][0]}x{sizes[other][1]}; "
            "set data.image_size to resize them all"
        )
    channels = cfg.channels or (1 if all(m in GRAY_MODES for m in modes) else 3)
    w, h = (cfg.image_size, cfg.image_size) if cfg.image_size else sizes[0]
    images = np.empty((len(files), channels, h, w), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc="decode PNG", unit="img", disable=None)):
        with Image.open(f) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
        images[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    labels, num_classes = None, None
    if all(f.parent != root for f in files):
        classes = sorted({f.relative_to(root).parts[0] for f in files})
        labels = np.array([classes.index(f.relative_to(root).parts[0]) for f in files], dtype=np.int64)
        num_classes = len(classes)
    return ImageData(images, labels, root.name, num_classes)


def read_parquet_source(cfg: DataConfig) -> TextData | ImageData:
    """Parquet file(s): text from a string column "text", images from an "image" tensor column.

    Files are read in sorted order with pyarrow, so the item order (and the split) is stable.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (registers Ray's tensor extension types with pyarrow)

    root = Path(cfg.source).expanduser()
    files = _files_of("parquet", root)
    if not files:
        raise DataError(f"data.source: {str(root)!r} holds no .parquet files")
    want = "text" if cfg.modality == "text" else "image"
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        if want not in names:
            raise DataError(f"data.source: {f.name} has columns {names}; data.modality={cfg.modality!r} needs a {want!r} column")
        tables.append(pq.read_table(f, columns=[want] + (["label"] if want == "image" and "label" in names else [])))
    table = pa.concat_tables(tables)
    if want == "text":
        text = "\n".join(s for s in table.column("text").to_pylist() if s)
        if not text.strip():
            raise DataError(f"data.source: the text column of {str(root)!r} is empty")
        return TextData(text.encode("utf-8"), root.name)
    col = table.column("image")
    try:
        images = np.concatenate([chunk.to_numpy() for chunk in col.chunks])
    except (TypeError, ValueError, pa.ArrowInvalid, NotImplementedError) as e:
        raise DataError(f"data.source: column 'image' of {str(root)!r} ({col.type}) is not a tensor column: {e}") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"data.source: column 'image' must be uint8 [H,W] or [C,H,W], got {images.dtype} {images.shape[1:]}")
    if images.ndim == 3:
        images = images[:, None]
    labels = table.column("label").to_numpy().astype(np.int64) if "label" in table.column_names else None
    num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else None
    return ImageData(images, labels, root.name, num_classes)


# ----------------------------------------------------------------------------------------------
# image conversion shared by every image source


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
    for i in tqdm(range(n), desc="resize", unit="img", disable=None):
        for ch in range(c):
            im = Image.fromarray(images[i, ch]).resize((size, size), Image.Resampling.BILINEAR)
            out[i, ch] = np.asarray(im)
    return out


def finish_images(data: ImageData, cfg: DataConfig) -> ImageData:
    """Apply max_items, data.channels and data.image_size; check the result is square and non-empty."""
    if cfg.max_items:
        data.images = data.images[: cfg.max_items]
        data.labels = None if data.labels is None else data.labels[: cfg.max_items]
        data.extra = {k: v[: cfg.max_items] for k, v in data.extra.items()}
    if len(data.images) == 0:
        raise DataError(f"data.source: {data.name} holds no images")
    if cfg.channels:
        data.images = _to_channels(data.images, cfg.channels)
    h, w = data.images.shape[2:]
    if cfg.image_size and (h, w) != (cfg.image_size, cfg.image_size):
        data.images = _resize(data.images, cfg.image_size)
    elif h != w:
        raise DataError(f"data.source: images are {h}x{w} (not square); set data.image_size to resize them")
    data.images = np.ascontiguousarray(data.images)
    return data
