"""`creagen generate`: text to stdout, images to a PNG grid, from a bundle or a running server.

    creagen generate runs/demo/bundles/rnn --prompt "ROMEO:" --max-new-tokens 200 --seed 1
    creagen generate runs/demo/bundles/gan --n 16 --out samples.png
    creagen generate --url http://127.0.0.1:8000 --model rnn --prompt "ROMEO:"

Parameters go through the same request models (TextRequest / ImageRequest) as the server, so the
caps and error messages are the same in both modes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from creagen_ray.config import ConfigError, ImageRequest, TextRequest, format_validation_error
from creagen_ray.provenance import is_creagen, provenance, read_png_text, with_png_text


def text_request(args: argparse.Namespace) -> TextRequest:
    """The TextRequest the CLI flags describe (ConfigError naming the field when invalid)."""
    fields = {
        "prompt": args.prompt,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "n": args.n,
    }
    return _validate(TextRequest, fields)


def image_request(args: argparse.Namespace) -> ImageRequest:
    """The ImageRequest the CLI flags describe."""
    return _validate(ImageRequest, {"n": args.n, "seed": args.seed})


def _validate(kind: type, fields: dict[str, Any]) -> Any:
    try:
        return kind.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e).replace("invalid config", "invalid request")) from None


def print_texts(prompt: str, texts: list[str]) -> None:
    """Each sample as prompt + continuation, separated by a rule when there are several."""
    for i, text in enumerate(texts):
        if i:
            print("\n" + "-" * 40)
        print(prompt + text)


def write_png(data: bytes, out: str | Path) -> Path:
    """Write PNG bytes to `out` atomically (a temp file renamed: never a half-written image)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def generate_local(args: argparse.Namespace) -> int:
    """Load and verify a bundle, generate in this process; PNGs carry provenance text chunks."""
    from creagen_ray.bundle import load_bundle  # torch: only here, so `--url` is a light HTTP client
    from creagen_ray.images import png_bytes

    bundle = load_bundle(args.bundle)
    if bundle.modality == "text":
        print_texts(args.prompt, bundle.generate(text_request(args)))
    else:
        req = image_request(args)
        if req.seed is None:  # drawn here, so the PNG's record reproduces the grid
            req = req.model_copy(update={"seed": secrets.randbelow(2**31)})
        record = provenance(Path(args.bundle).name, bundle.sha256, req.seed, req.model_dump(exclude={"seed"}))
        path = write_png(with_png_text(png_bytes(bundle.generate(req)), record), args.out)
        print(f"wrote {path}")
    return 0


def inspect_cli(path: str) -> int:
    """`creagen inspect FILE.png`: print the PNG's provenance record as JSON (exit 1 when it has none)."""
    try:
        record = read_png_text(path)
    except (OSError, ValueError) as e:
        print(f"creagen: {path}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2, sort_keys=True))
    if not is_creagen(record):
        print(f"creagen: {path} carries no creagen-ray provenance", file=sys.stderr)
        return 1
    return 0


def generate_remote(args: argparse.Namespace) -> int:
    """Ask a running `creagen serve` (the model's modality decides text or images)."""
    from creagen_ray.serving.client import CreagenClient

    if not args.model:
        raise ConfigError("--url needs --model ID (see GET /v1/models)")
    with CreagenClient(args.url, api_key=args.api_key) as client:
        info = client.model(args.model)
        if info["modality"] == "text":
            req = text_request(args)
            print_texts(req.prompt, client.text(args.model, **req.model_dump()))
        else:
            req = image_request(args)
            out = write_png(client.images(args.model, n=req.n, seed=req.seed), args.out)  # the server's PNG chunks
            print(f"wrote {out}")
    return 0


def generate_cli(args: argparse.Namespace) -> int:
    """Entry point of `creagen generate`: a bundle path, or --url with --model."""
    import httpx

    from creagen_ray.serving.client import CreagenHTTPError

    if bool(args.bundle) == bool(args.url):
        raise ConfigError("give either a BUNDLE directory or --url URL (with --model ID)")
    errors: tuple[type[Exception], ...] = (CreagenHTTPError, httpx.HTTPError)
    if not args.url:
        from creagen_ray.bundle import BundleError

        errors += (BundleError,)
    try:
        return generate_remote(args) if args.url else generate_local(args)
    except errors as e:
        print(f"creagen: {e}", file=sys.stderr)
        return 1
