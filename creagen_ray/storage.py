"""Object storage: runs, checkpoints, prepared data and bundles on a local disk or behind a URI.

    fs, path = resolve("s3://bucket/runs")        # (pyarrow FileSystem, path inside it)
    check_writable("s3://bucket/runs")            # StorageError before any training, naming the URI
    uri = upload_dir(local_bundle, "s3://bucket/runs/my-run/bundle")
    local = fetch_bundle("s3://bucket/runs/my-run/bundle")   # cached by manifest sha256, verified

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


def _aws_credentials_in_env() -> bool:
    """True when the environment names AWS credentials (keys, a profile, a web identity, a config file)."""
    keys = os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    named = any(os.environ.get(v) for v in ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"))
    return bool(keys or named or (Path.home() / ".aws" / "credentials").is_file())


def describe_error(location: str, action: str, err: BaseException) -> StorageError:
    """A StorageError that says what failed where, why (when it can tell), and where credentials come from."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    low = msg.lower()
    if location.startswith(("s3://", "s3a://")) and not _aws_credentials_in_env() and ("access_denied" in low or "http status" in low):
        why = "no AWS credentials: none in the environment and no instance role answered"
    elif any(k in low for k in ("access_denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden")):
        why = "access denied: the credentials are wrong or may not use this bucket"
    elif "bucket" in low and "not found" in low or "nosuchbucket" in low or "no_such_bucket" in low:
        why = "the bucket does not exist (creagen never creates buckets)"
    else:
        why = msg
    return StorageError(f"{location}: cannot {action}: {why} [{msg}]; {_CREDENTIAL_HINT}")


def check_writable(location: str) -> None:
    """Write and delete a small probe object under `location`: a StorageError now, not after training.

    Catches a missing or wrong credential, a missing bucket and a read-only mount before any work.
    """
    fs, path = resolve(location)
    probe = f"{path}/.creagen-write-check-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as e:
        raise describe_error(location, "write", e) from None


def exists(location: str) -> bool:
    """True when a file or directory exists at `location`."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    """A whole (small) file's bytes."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file (parents created); on object stores the object appears all at once."""
    fs, path = resolve(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def list_dirs(location: str) -> list[str]:
    """Names of the sub-folders directly under `location` (sorted; [] when it holds none)."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def upload_dir(local_dir: str | Path, location: str, last: str | None = None) -> str:
    """Copy the files of a flat local folder to `location`; `last` (a manifest) is written after the rest.

    A reader that trusts only folders holding `last` never sees a half-uploaded one. An existing
    `last` at the target is deleted first, so a replaced folder is never half old, half new.
    """
    fs, path = resolve(location)
    names = sorted(p.name for p in Path(local_dir).iterdir() if p.is_file())
    if last is not None:
        names = [n for n in names if n != last] + ([last] if (Path(local_dir) / last).is_file() else [])
    try:
        fs.create_dir(path, recursive=True)
        if last is not None and fs.get_file_info(f"{path}/{last}").type == pafs.FileType.File:
            fs.delete_file(f"{path}/{last}")
        for name in names:
            pafs.copy_files(str(Path(local_dir) / name), f"{path}/{name}", destination_filesystem=fs)
    except (OSError, ValueError) as e:
        raise describe_error(location, "write", e) from None
    return location


# ----------------------------------------------------------------------------------------------
# bundles behind a URI: a local cache keyed by the manifest's sha256


def cache_root() -> Path:
    """$CREAGEN_CACHE_DIR, else ~/.cache/creagen: where remote bundles are kept on this node."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "creagen").expanduser()


def fetch_bundle(location: str, digest: str | None = None) -> Path:
    """A verified local copy of the bundle at `location` (returned as is when it is local).

    The copy lives in `<cache>/bundles/<sha256 of manifest.json>`, so each node downloads a bundle
    once and a changed bundle gets a new folder. `digest` pins the manifest hash seen earlier (the
    store scan): a bundle changed in storage since then is refused. Every file is checked against
    the manifest before the folder is used; a tampered bundle raises BundleError.
    """
    from creagen_ray.bundle import MANIFEST, BundleError, verify_bundle

    if not is_uri(location):
        return Path(str(location).removeprefix("file://")).expanduser()
    try:
        raw = read_bytes(join(location, MANIFEST))
    except FileNotFoundError:
        raise BundleError(f"{location} is not a bundle: {MANIFEST} is missing") from None
    except OSError as e:
        raise describe_error(location, "read", e) from None
    got = hashlib.sha256(raw).hexdigest()
    if digest is not None and got != digest:
        raise BundleError(f"{location}: {MANIFEST} changed in storage since it was verified (sha256 {got[:12]} != {digest[:12]})")
    try:
        files = json.loads(raw)["files"]
        names = list(files) if isinstance(files, dict) else []
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{location}: unreadable {MANIFEST}") from None
    if any(Path(n).name != n or n in ("", ".", "..") for n in names):
        raise BundleError(f"{location}: {MANIFEST} lists a file outside the bundle folder")
    target = cache_root() / "bundles" / got
    if (target / MANIFEST).is_file():
        verify_bundle(target)  # cheap next to a download; catches a damaged cache
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{got[:12]}.", dir=target.parent))
    try:
        fs, path = resolve(location)
        for name in names:
            pafs.copy_files(f"{path}/{name}", str(tmp / name), source_filesystem=fs)
        (tmp / MANIFEST).write_bytes(raw)
        verify_bundle(tmp)  # BundleError names the file that does not match
        try:
            os.rename(tmp, target)
        except OSError:  # another replica on this node won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except FileNotFoundError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{location}: a file listed in {MANIFEST} is missing ({e})") from None
    except BundleError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(str(e).replace(str(tmp), location)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def manifest_digest(location: str) -> str:
    """sha256 of a bundle's manifest.json (the cache key of `fetch_bundle`)."""
    from creagen_ray.bundle import MANIFEST

    if is_uri(location):
        return hashlib.sha256(read_bytes(join(location, MANIFEST))).hexdigest()
    return hashlib.sha256((Path(location) / MANIFEST).read_bytes()).hexdigest()
