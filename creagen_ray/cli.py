"""`creagen`: the command line. A door into the library; it holds no logic of its own.

    creagen demo                              train one small generator of each family (main job)
    creagen prepare CONFIG [--set k=v ...]    Ray Data: source -> Parquet shards + manifest
    creagen train CONFIG [--set k=v ...]      Ray Train: DDP training, checkpoints, bundle
    creagen tune CONFIG [--resume]            Ray Tune: search losses / optimizers (ASHA, PBT)
    creagen generate BUNDLE | --url URL       text to stdout, images to a PNG grid
    creagen serve BUNDLE_OR_DIR ...           Ray Serve on 127.0.0.1 (API key: $CREAGEN_API_KEY or --api-key-file)
    creagen sign BUNDLE ...                   HMAC-sign bundles' manifests ($CREAGEN_SIGNING_KEY or --key-file)
    creagen config show CONFIG | schema       the resolved config / its JSON schema
    creagen inspect FILE.png                  the provenance record a generated PNG carries
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

from creagen_ray.config import ConfigError, ImageRequest, TextRequest, config_schema, dump_config, load_config, read_config, validate_config
from creagen_ray.serving.settings import MemorizationSettings
from creagen_ray.serving.dataplane import FLAGS as DATAPLANE_FLAGS


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML or JSON experiment config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optimizer.lr=3e-3 (repeatable; values are YAML)",
    )


class _SetField(argparse.Action):
    """A flag that is shorthand for `--set <field>=VALUE` (e.g. --tracking mlflow)."""

    def __init__(self, *args: object, field: str, **kwargs: object) -> None:
        self.field = field
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: object, option: object = None) -> None:
        ns.overrides = [*(ns.overrides or []), f"{self.field}={value}"]


def _tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking",
        choices=["none", "mlflow", "tensorboard"],
        action=_SetField,
        field="train.tracking",
        dest="overrides",
        help="experiment tracking, same as --set train.tracking=... (MLflow store default: <storage_path>/mlruns)",
    )


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config or the JSON schema."""
    if args.what == "schema":
        print(json.dumps(config_schema(), indent=2))
        return 0
    if not args.config:
        raise ConfigError("creagen config show needs a CONFIG file")
    from creagen_ray.tuning.space import parse_space, split_space  # pure: spaces validate without Ray

    raw = read_config(args.config, args.overrides)
    dims = split_space(raw)[1]
    cfg = parse_space(raw)[2] if dims else validate_config(raw)
    print(dump_config(cfg), end="")
    for path, dim in dims.items():  # a tune config: the base above is the space's first corner
        print(f"# search: {path}: {dim.describe()}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare the config's data source into Parquet shards and print its statistics."""
    from creagen_ray.data.prepare import prepare_data

    cfg = load_config(args.config, args.overrides)
    prepared = prepare_data(cfg.data, storage_path=cfg.train.storage_path, force=args.force)
    print(prepared.summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train with Ray Train; prints progress, then the bundle path and final metrics."""
    from creagen_ray.training import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, address=args.address)
    print(f"bundle: {result.bundle_path}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Search hyperparameters with Ray Tune; prints the ranked table and best config path."""
    from creagen_ray.tuning import tune_from_file

    result = tune_from_file(args.config, args.overrides, resume=args.resume, address=args.address)
    print(result.summary())
    return 130 if result.interrupted else 0  # Ctrl-C: not a finished search (no best.yaml written)


API_KEY_ENV = "CREAGEN_API_KEY"


def _secret_args(p: argparse.ArgumentParser, what: str) -> None:
    """--api-key-file, plus the refused --api-key (a key on the command line is visible in `ps`)."""
    p.add_argument("--api-key-file", default=None, help=f"file holding the API key {what} (default: ${API_KEY_ENV})")
    p.add_argument("--api-key", default=None, help=argparse.SUPPRESS)


def _api_key(args: argparse.Namespace) -> str | None:
    """The API key from --api-key-file or $CREAGEN_API_KEY; --api-key is refused (it shows in `ps`)."""
    from creagen_ray.serving.settings import read_secret

    if args.api_key is not None:
        raise ConfigError(f"--api-key is removed: a key on the command line shows in `ps`; set ${API_KEY_ENV} or use --api-key-file")
    if args.api_key_file:
        try:
            return read_secret(args.api_key_file)
        except ValueError as e:
            raise ConfigError(f"--api-key-file: {e}") from None
    return os.environ.get(API_KEY_ENV) or None


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate from a bundle (or a running server with --url): text to stdout, images to PNG."""
    from creagen_ray.generate import generate_cli

    args.api_key = _api_key(args)
    return generate_cli(args)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the provenance text chunks of a PNG creagen generated."""
    from creagen_ray.generate import inspect_cli

    return inspect_cli(args.file)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve bundles with Ray Serve on 127.0.0.1 and block until Ctrl-C."""
    from creagen_ray.serving.local import serve_forever

    return serve_forever(
        args.bundles,
        host=args.host,
        port=args.port,
        api_key=_api_key(args),
        signing_key_file=args.signing_key_file,
        max_concurrent_per_client=args.max_concurrent_per_client,
        memorization=args.memorization,
        request_log=args.request_log,
        dataplane=args.dataplane,
    )


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign each bundle's manifest with the operator's HMAC key (writes manifest.sig)."""
    from creagen_ray.bundle import sign_bundle
    from creagen_ray.serving.settings import SIGNING_KEY_ENV, read_secret

    try:
        key = read_secret(args.key_file) if args.key_file else os.environ.get(SIGNING_KEY_ENV, "").strip()
    except ValueError as e:
        raise ConfigError(f"--key-file: {e}") from None
    if not key:
        raise ConfigError(f"creagen sign needs a key: --key-file FILE or ${SIGNING_KEY_ENV}")
    for bundle in args.bundles:
        print(f"signed {sign_bundle(bundle, key.encode())}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: train a small generator of each family on embedded data, write samples."""
    from creagen_ray.demo import run_demo

    return run_demo(out_dir=args.out, families=args.families, steps=args.steps)


def version_string() -> str:
    """creagen-ray X (ray Y, torch Z, python W), read from package metadata (no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    from creagen_ray import __version__

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return f"creagen-ray {__version__} (ray {v('ray')}, torch {v('torch')}, python {sys.version.split()[0]})"


def field_help(model: type, name: str, text: str = "") -> str:
    """A flag's help from a pydantic field: its description (or `text`) and its range, e.g. `0 <= x <= 10`."""
    info = model.model_fields[name]
    bounds = {}
    for m in info.metadata:
        for k in ("ge", "gt", "le", "lt", "max_length"):
            if getattr(m, k, None) is not None:
                bounds[k] = getattr(m, k)
    lo = f"{bounds['ge']} <= " if "ge" in bounds else f"{bounds['gt']} < " if "gt" in bounds else ""
    hi = f" <= {bounds['le']}" if "le" in bounds else f" < {bounds['lt']}" if "lt" in bounds else ""
    rng = f"range {lo}x{hi}" if lo or hi else f"at most {bounds['max_length']} chars" if "max_length" in bounds else ""
    parts = [p for p in (text or info.description, rng) if p]
    return "; ".join(parts)


EXAMPLES = {
    "config": "creagen config show jobs/configs/demo-rnn.yaml --set optimizer.lr=3e-3",
    "prepare": "creagen prepare jobs/configs/demo-vae.yaml",
    "train": "creagen train jobs/configs/demo-rnn.yaml --set train.steps=200 --tracking mlflow",
    "tune": "creagen tune jobs/configs/demo-tune.yaml",
    "generate": 'creagen generate runs/demo/bundles/rnn --prompt "def " --temperature 0.8 --top-p 0.9\n'
    "  creagen generate runs/demo/bundles/gan --n 16 --seed 0 --out grid.png",
    "inspect": "creagen inspect grid.png",
    "serve": "creagen serve runs/demo/bundles      # then open http://127.0.0.1:8000/",
    "demo": "creagen demo --out runs/demo",
    "sign": "creagen sign runs/demo/bundles/* --key-file signing.key",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example's line breaks and appends each flag's default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, "", False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _document_subcommands(sub: argparse._SubParsersAction) -> None:
    """Every subcommand's --help: its one-line help as description, an example, flag defaults."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        p.formatter_class = _HelpFormatter
        p.description = p.description or (helps.get(name) or "").capitalize()
        if name in EXAMPLES and not p.epilog:
            p.epilog = "example:\n  " + EXAMPLES[name]


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand (also what --help prints)."""
    parser = argparse.ArgumentParser(
        prog="creagen",
        description="Train, tune and serve creative generative models (RNN, VAE, GAN) on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--version", action="version", version=version_string())
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show Ray's INFO logs and warnings (hidden by default) and the full traceback of a failure",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="show the resolved config or the JSON schema")
    p.add_argument("what", choices=["show", "schema"])
    _config_args(p, required=False)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("prepare", help="prepare a data source into Parquet shards (Ray Data)")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="rewrite shards even if up to date")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train with Ray Train (DDP), checkpoint, export a bundle")
    _config_args(p)
    p.add_argument("--address", default=None, help="Ray address; default: a running cluster, else local")
    _tracking_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search hyperparameters with Ray Tune (ASHA / PBT)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (Tuner.restore)")
    p.add_argument("--address", default=None, help="Ray address; default: a running cluster, else local")
    _tracking_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("generate", help="generate text or images from a bundle or a server")
    p.add_argument("bundle", nargs="?", help="bundle directory or storage URI, e.g. s3://bucket/runs/RUN/bundle (omit with --url)")
    p.add_argument("--url", help="base URL of a running `creagen serve`")
    p.add_argument("--model", help="model id on the server")
    _secret_args(p, "sent as X-API-Key")
    p.add_argument("--prompt", default="", help=field_help(TextRequest, "prompt", "text to continue"))
    p.add_argument("--max-new-tokens", type=int, default=200, help=field_help(TextRequest, "max_new_tokens", "characters to add"))
    p.add_argument("--temperature", type=float, default=None, help=field_help(TextRequest, "temperature"))
    p.add_argument("--top-k", type=int, default=None, help=field_help(TextRequest, "top_k", "keep the k likeliest tokens; off when unset"))
    p.add_argument("--top-p", type=float, default=None, help=field_help(TextRequest, "top_p", "nucleus mass; off when unset"))
    p.add_argument("--n", type=int, default=16, help=field_help(ImageRequest, "n", "images (or text samples) to generate"))
    p.add_argument("--seed", type=int, default=None, help=field_help(ImageRequest, "seed", "same seed, same output; drawn (and recorded in the PNG) when unset"))
    p.add_argument("--out", default="samples.png", help="PNG grid path for images")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "inspect",
        help="print the provenance record of a generated PNG",
        description="Print the provenance text chunks of a PNG (generator, model, bundle sha256, seed, "
        "parameters, synthetic marker) as JSON. Exit 1 when the PNG carries no creagen-ray record.",
    )
    p.add_argument("file", help="a PNG written by creagen generate, the server, or creagen_ray.load()")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("serve", help="serve bundles with Ray Serve on 127.0.0.1")
    p.add_argument(
        "bundles", nargs="+", help="bundle directories, folders holding bundles or runs, or storage URIs (s3://bucket/runs)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    _secret_args(p, "required in the X-API-Key header")
    p.add_argument("--signing-key-file", default=None, help="serve only bundles signed with this key (creagen sign)")
    p.add_argument("--max-concurrent-per-client", type=int, default=None, help="requests in flight per client; more get 429")
    p.add_argument("--memorization", choices=["off", "flag", "refuse"], default="off",
                   help=field_help(MemorizationSettings, "mode", "copy check of text responses"))
    p.add_argument("--request-log", default=None, metavar="FILE",
                   help="opt-in: append every request and output, UNREDACTED, as JSON lines to FILE (off by default)")
    p.add_argument("--dataplane", choices=list(DATAPLANE_FLAGS), default=None,
                   help="Ray Serve data plane when creagen serve starts Ray itself (creagen_ray/serving/dataplane.py); "
                   "default: haproxy (its stats and metrics listeners get free ports); "
                   "a running cluster keeps the flags its nodes started with")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("sign", help="sign bundles' manifests with an HMAC key (for serve's require_signature)")
    p.add_argument("bundles", nargs="+", help="bundle directories")
    p.add_argument("--key-file", default=None, help="file holding the signing key (default: $CREAGEN_SIGNING_KEY)")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("demo", help="main job: train one small generator per family on embedded data")
    p.add_argument("--out", default="runs/demo", help="where samples, metrics and bundles go")
    from creagen_ray.demo import demo_families

    demos = demo_families()
    p.add_argument("--families", nargs="+", default=demos, choices=demos, help="default: every family with a demo config")
    p.add_argument("--steps", type=int, default=None, help="override training steps per family")
    p.set_defaults(func=cmd_demo)
    _document_subcommands(sub)
    for p in sub.choices.values():  # `creagen train CONFIG --verbose` as well as `creagen --verbose train ...`
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show Ray's own log lines and warnings (hidden by default) and the full traceback of a failure")
    return parser


def _known_failure(exc: BaseException) -> str | None:
    """A one-line account of a runtime failure creagen knows (data, checkpoint, NaN, worker group); else None."""
    from creagen_ray.bundle import BundleError
    from creagen_ray.training.checkpoint import CheckpointError

    if isinstance(exc, (CheckpointError, BundleError)):
        return f"checkpoint/bundle: {exc}"
    if type(exc).__name__ in ("NonFiniteLossError", "TrialDiverged"):  # no torch/Ray import just to compare
        return f"training diverged: {exc}"
    if "ray" in sys.modules:
        import ray.exceptions
        import ray.train

        if isinstance(exc, ray.train.TrainingFailedError):
            causes = getattr(exc, "worker_failures", None) or {}
            cause = next(iter(causes.values()), exc) if isinstance(causes, dict) else exc
            lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
            last = lines[-1] if lines else type(cause).__name__
            return f"training failed after the allowed restarts (train.max_failures): {last[:400]}"
        if isinstance(exc, ray.exceptions.RayError):
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            return f"Ray: {type(exc).__name__}: {(lines[-1] if lines else '')[:400]}"
    return None


def _write_log(command: str, text: str) -> Path:
    """The full traceback of a failed command, in <tmp>/creagen-logs/ (the path is printed)."""
    d = Path(tempfile.gettempdir()) / "creagen-logs"
    d.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = d / f"{command}-{stamp}-{os.getpid()}.log"
    path.write_text(text, encoding="utf-8")
    return path


def _ray_up() -> bool:
    """True when this process is connected to Ray (without importing Ray just to ask)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _shutdown_ray(was_up: bool) -> None:
    """Leave no Ray runtime this command started behind (a local one stops; a joined cluster keeps running)."""
    if not was_up and _ray_up():
        import ray

        ray.shutdown()


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand: 2 for a bad config, 1 with one clear line + log path for a known failure, 130 on Ctrl-C.

    `--verbose` prints the traceback as well; an unknown exception keeps its traceback (a bug to report).
    """
    verbose = bool(getattr(args, "verbose", False))
    command = getattr(args, "command", None) or "creagen"
    was_up = _ray_up()  # called in-process (tests, notebooks) on a running Ray: leave that one alone
    try:
        return handler(args)
    except ConfigError as e:
        if verbose:
            traceback.print_exc()
        print(f"creagen: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"creagen {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into known failures and bugs below
        message = _known_failure(e)
        if message is None:
            raise
        text = traceback.format_exc()
        log = _write_log(command, text)
        if verbose:
            print(text, file=sys.stderr, end="")
        print(f"creagen {command}: {message}\n  full traceback: {log}  (or rerun with --verbose)", file=sys.stderr)
        return 1
    finally:
        _shutdown_ray(was_up)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `creagen` console script."""
    args = build_parser().parse_args(argv)
    from creagen_ray.console import configure

    configure(verbose=args.verbose)
    code = run_handler(args.func, args)
    if argv is None and "ray" in sys.modules:
        # The `creagen` command itself, done (Ray is shut down by now): Python's own teardown of
        # what torch, Ray and pyarrow leave behind took 5-20 s on 2 busy cores after `creagen
        # train` had printed its result. Flush what is ours and leave (issue 14: exit within 10 s).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
