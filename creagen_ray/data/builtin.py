"""Embedded data sets that need no download and ship no third-party content.

    builtin:python-docs   the help text of this Python installation (`pydoc_data.topics`)
    builtin:shapes        a dSprites-like set of shapes drawn with numpy, with known factors

Both are deterministic: the text depends only on the Python version, the images only on
(n, size, channels, seed).
"""

from __future__ import annotations

import hashlib

import numpy as np
from tqdm.auto import tqdm

BUILTINS = ("python-docs", "shapes")
SHAPE_CLASSES = ("square", "ellipse", "heart")
SHAPES_VERSION = "shapes/1"  # bump when the drawing code changes, so old shards are re-prepared


def python_docs_text() -> str:
    """The pydoc help topics of this Python, sorted by topic name: a ~0.5 MB English corpus."""
    from pydoc_data.topics import topics

    sections = [f"{name}\n{'=' * len(name)}\n\n{topics[name].strip()}\n" for name in sorted(topics)]
    return "\n\n".join(sections)


def builtin_checksum(name: str) -> str:
    """sha256 identifying a builtin's content (the shapes' parameters live in the data config)."""
    content = python_docs_text() if name == "python-docs" else SHAPES_VERSION
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _shape_masks(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of one shape class in its own frame, where the shape spans about [-1, 1]^2."""
    if kind == 0:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if kind == 1:  # ellipse, 1 : 0.6
        return u**2 + (v / 0.6) ** 2 <= 1.0
    # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled to fit and turned point-down (image y grows down)
    x, y = 1.2 * u, 0.15 - 1.2 * v
    return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0


def make_shapes(
    n: int, size: int = 32, channels: int = 1, seed: int = 0, chunk: int = 1024, items: range | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw n shapes -> (uint8 images [n, C, size, size], factors incl. "label" = shape class).

    `items` (a sub-range of range(n)) draws only those shapes, identical to the same rows of the
    full set: what one Ray task of `creagen prepare` renders.

    Factors, drawn uniformly: shape class, scale in [0.5, 1], rotation in [0, 2 pi) radians and
    position x, y in [0, 1] (left/top to right/bottom of the range that keeps the shape inside the
    frame). Edges are anti-aliased by 2x2 supersampling. With 3 channels each shape gets a random
    colour. All randomness is drawn up front, so the result does not depend on `chunk`.
    """
    rng = np.random.default_rng(seed)
    factors = {
        "label": rng.integers(0, len(SHAPE_CLASSES), n).astype(np.int64),
        "scale": rng.uniform(0.5, 1.0, n).astype(np.float32),
        "rotation": rng.uniform(0.0, 2 * np.pi, n).astype(np.float32),
        "pos_x": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "pos_y": rng.uniform(0.0, 1.0, n).astype(np.float32),
    }
    colour = rng.uniform(0.4, 1.0, (n, 3)).astype(np.float32)
    if items is not None:
        factors = {k: v[items.start : items.stop] for k, v in factors.items()}
        colour = colour[items.start : items.stop]
        n = len(colour)

    ss = 2  # supersampling factor
    grid = ((np.arange(size * ss) + 0.5) / ss).astype(np.float32)  # pixel-centre coordinates
    radius = factors["scale"] * 0.25 * size  # half-extent of the shape in pixels
    cx = (0.3 + 0.4 * factors["pos_x"]) * size
    cy = (0.3 + 0.4 * factors["pos_y"]) * size
    cos, sin = np.cos(factors["rotation"]), np.sin(factors["rotation"])

    images = np.empty((n, channels, size, size), dtype=np.uint8)
    for start in tqdm(range(0, n, chunk), desc="builtin:shapes", unit="chunk", disable=None):
        sl = slice(start, min(start + chunk, n))
        dx = grid[None, None, :] - cx[sl, None, None]  # [b, 1, W]
        dy = grid[None, :, None] - cy[sl, None, None]  # [b, H, 1]
        r = radius[sl, None, None]
        u = (cos[sl, None, None] * dx + sin[sl, None, None] * dy) / r  # rotate into the shape frame
        v = (-sin[sl, None, None] * dx + cos[sl, None, None] * dy) / r
        inside = np.zeros(u.shape, dtype=np.float32)
        labels = factors["label"][sl]
        for kind in range(len(SHAPE_CLASSES)):
            idx = np.flatnonzero(labels == kind)
            if idx.size:
                inside[idx] = _shape_masks(kind, u[idx], v[idx])
        b = inside.shape[0]
        gray = inside.reshape(b, size, ss, size, ss).mean(axis=(2, 4))  # [b, size, size] in [0, 1]
        if channels == 1:
            pix = gray[:, None]
        else:
            pix = gray[:, None] * colour[sl, :, None, None]
        images[sl] = np.rint(pix * 255.0).astype(np.uint8)
    return images, factors
