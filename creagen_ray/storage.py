"""Object storage: runs, checkpoints, prepared data and bundles on a local disk or behind a URI.

    fs, path = resolve("s3://bucket/runs")        # (pyarrow FileSystem, path inside it)

Every location is a plain local path or a URI that `pyarrow.fs` understands (`s3://`, `gs://`,
`file://`, `hdfs://`). Credentials never appear in a URI or a config: they come from the
environment of the process that touches storage, as the cloud SDKs read them (`AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` / `AWS_PROFILE`, or the node's IAM role; `GOOGLE_APPLICATION_CREDENTIALS`
or the VM's service account). An S3-compatible store (MinIO, Ceph, moto) is reached by setting
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), e.g. `http://127.0.0.1:9000`; `AWS_REGION` /
`AWS_DEFAULT_REGION` pick the region. The filesystem objects built here carry no secret, so they
can travel to Ray workers, which read the credentials of their own node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from creagen_ray.config import ConfigError

CACHE_ENV = "CREAGEN_CACHE_DIR"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CREDENTIAL_HINT = (
    "credentials come from the environment: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
    "or the node's IAM role) for s3://, GOOGLE_APPLICATION_CREDENTIALS or the VM's service account for "
    "gs://; set AWS_ENDPOINT_URL for an S3-compatible store"
)


class StorageError(ConfigError):
    """A storage location that cannot be reached, read or written (the message names the URI)."""


def is_uri(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations other than file:// (those live on this machine's disk)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a local path or a URI (no normalisation of the URI's scheme)."""
    out = str(base).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def _s3_filesystem(uri: str) -> pafs.S3FileSystem | None:
    """An S3FileSystem for the endpoint in AWS_ENDPOINT_URL[_S3], or None to let pyarrow decide."""
    endpoint = next((os.environ[e] for e in ENDPOINT_ENVS if os.environ.get(e)), None)
    if not endpoint:
        return None
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https", region=region)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a storage URI.

    A bad scheme or an unreachable bucket raises StorageError naming the location.
    """
    text = str(location)
    if not is_uri(text):
        local = text.removeprefix("file://")
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    scheme = text.split("://", 1)[0].lower()
    try:
        if scheme in ("s3", "s3a"):
            fs = _s3_filesystem(text)
            if fs is not None:
                return fs, text.split("://", 1)[1].rstrip("/")
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    except (OSError, ValueError, TypeError) as e:
        raise StorageError(f"{text}: cannot open this storage location ({e}); {_CREDENTIAL_HINT}") from None


def describe_error(location: str, action: str, err: BaseException) -> StorageError:
    """A StorageError that says what failed where, and where credentials and endpoints come from."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return StorageError(f"{location}: cannot {action} ({msg}); {_CREDENTIAL_HINT}")
