"""Provenance of generated content: what made it, from which bundle, with which seed and settings.

Every PNG creagen writes carries the record as PNG text chunks, every HTTP response as
`X-Creagen-*` headers (text responses also in their JSON body), and `creagen inspect FILE.png`
reads it back:

    record = provenance(model="gan", bundle_sha256="3f1c...", seed=7, params={"n": 16})
    png = with_png_text(png_bytes(images), record)      # PNG bytes with tEXt/iTXt chunks
    read_png_text(png)                                  # -> the record, as strings

The record marks the content as synthetic twice: `synthetic: true` and IPTC's digital source
type for content made by a trained model (what C2PA / IPTC-aware tools look for).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from creagen_ray import __version__

GENERATOR = "creagen-ray"
IPTC_SYNTHETIC = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
HEADER_PREFIX = "X-Creagen-"
KEYS = ("generator", "generator_version", "model", "bundle_sha256", "seed", "parameters", "synthetic", "DigitalSourceType")


def provenance(model: str, bundle_sha256: str | None, seed: int | None, params: dict[str, Any]) -> dict[str, str]:
    """The provenance record (all values strings) of one generation."""
    return {
        "generator": GENERATOR,
        "generator_version": __version__,
        "model": model,
        "bundle_sha256": bundle_sha256 or "unknown",
        "seed": "none" if seed is None else str(seed),
        "parameters": json.dumps(params, sort_keys=True, separators=(",", ":"), default=str),
        "synthetic": "true",
        "DigitalSourceType": IPTC_SYNTHETIC,
    }


def with_png_text(png: bytes, record: dict[str, str]) -> bytes:
    """PNG bytes re-encoded with the record as text chunks (plus Software = creagen-ray version)."""
    img = Image.open(io.BytesIO(png))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"{GENERATOR} {__version__}")
    for k, v in record.items():
        info.add_itxt(k, v) if not v.isascii() else info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_text(source: bytes | str | Path) -> dict[str, str]:
    """The text chunks of a PNG (bytes or a path); ValueError when it is not a PNG."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError) as e:
        raise ValueError(f"not a readable PNG: {e}") from None
    if img.format != "PNG":
        raise ValueError(f"not a PNG (format {img.format})")
    return {str(k): str(v) for k, v in getattr(img, "text", {}).items()}


def headers(record: dict[str, str]) -> dict[str, str]:
    """The record as HTTP headers (`X-Creagen-Bundle-Sha256: ...`); non-ASCII values JSON-escaped."""
    out = {}
    for k, v in record.items():
        name = HEADER_PREFIX + "-".join(p.capitalize() for p in k.replace("DigitalSourceType", "digital_source_type").split("_"))
        out[name] = v if v.isascii() else json.dumps(v)
    return out


def is_creagen(record: dict[str, str]) -> bool:
    """True when a record (PNG text or headers, as read back) says creagen-ray made it."""
    return record.get("generator") == GENERATOR and record.get("synthetic") == "true"
