"""Image grids and PNG encoding (Pillow does the PNG work)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Float images [N, C, H, W] in [0, 1] -> one uint8 grid [H', W', C] (C = 1 or 3)."""
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got {list(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    arr = (images.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)  # [N, C, H, W]
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = arr[i].transpose(1, 2, 0)
    return grid


def to_pil(array: np.ndarray) -> Image.Image:
    """uint8 [H, W, C] (C = 1 or 3) -> a PIL image (L or RGB)."""
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def png_bytes(images: torch.Tensor, nrow: int | None = None) -> bytes:
    """Float images [N, C, H, W] in [0, 1] -> PNG bytes of a grid (a single image when N == 1)."""
    arr = make_grid(images, nrow, padding=0 if images.shape[0] == 1 else 2)
    buf = io.BytesIO()
    to_pil(arr).save(buf, format="PNG")
    return buf.getvalue()


def save_png_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, record: dict[str, str] | None = None
) -> Path:
    """Write images [N, C, H, W] in [0, 1] as a PNG grid (with `record` as provenance text chunks)."""
    from creagen_ray.provenance import with_png_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(images, nrow)
    path.write_bytes(with_png_text(data, record) if record else data)
    return path


def decode_png(data: bytes, channels: int, size: int, max_side: int | None = None) -> torch.Tensor:
    """PNG bytes -> float image [1, C, size, size] in [0, 1] (converted and resized as needed).

    Only PNG is opened. The width and height are read from the header before any pixel is decoded:
    a side over `max_side` (or an image Pillow calls a decompression bomb) is a ValueError, so an
    upload can never make the decoder allocate more than max_side**2 pixels.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])  # reads the header only
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large: {e}") from None
    w, h = img.size
    if max_side is not None and (w > max_side or h > max_side):
        raise ValueError(f"image is {w}x{h} pixels; at most {max_side}x{max_side} is accepted")
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(0)
