"""Every third-party package the code imports is declared in pyproject.toml and pinned in the locks."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]


def norm(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Distribution names in [project].dependencies and every optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {norm(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in reqs}


def imported_modules(folders: list[str]) -> set[str]:
    """Top-level module names imported anywhere under the folders (absolute imports only)."""
    mods: set[str] = set()
    local: set[str] = set()  # modules that are files of the scanned folders (bench scripts import each other)
    for folder in folders:
        for f in (ROOT / folder).rglob("*.py"):
            local.add(f.stem)
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - local - {"creagen_ray", "serve", "tests"}


def test_every_import_is_declared() -> None:
    """Package code, jobs, serve, bench and tests import only declared distributions."""
    dists = packages_distributions()
    have = declared() | {"creagen-ray"}
    missing = {}
    for mod in sorted(imported_modules(["creagen_ray", "jobs", "serve", "bench", "tests", "deploy"])):
        names = {norm(d) for d in dists.get(mod, [])}
        assert names, f"imported module {mod!r} is not installed by any distribution"
        if not names & have:
            missing[mod] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_locks_pin_every_runtime_dependency() -> None:
    """Both cluster locks pin each declared runtime dependency; ray as installed; torch CPU vs CUDA."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {norm(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in project["dependencies"] + project["optional-dependencies"]["tracking"]}
    for kind in ("cpu", "gpu"):
        text = (ROOT / f"deploy/requirements-{kind}.lock").read_text()
        pins = {norm(m[0]): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}
        assert runtime <= set(pins), f"{kind} lock misses {sorted(runtime - set(pins))}: run `make lock`"
        assert pins["ray"] == ray.__version__
        assert pins["torch"].startswith("2.13.0")
        assert pins["torch"].endswith("+cpu") == (kind == "cpu")
        assert any(n.startswith("nvidia-") for n in pins) == (kind == "gpu")
