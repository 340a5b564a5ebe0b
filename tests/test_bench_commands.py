"""The bench/ scripts' documented commands, run as a user would (subprocess, repo root, relative paths), cut
to the smallest settings: a smoke run proves each script runs end to end and prints what docs/benchmarks.md
says it prints. Benchmarks are not timed tests: nothing here asserts a speed or a quality target."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(args: list[str], tmp_path: Path, timeout: float = 300) -> str:
    """`python bench/...` from the repo root; its temporary files under tmp_path; stdout (it must exit 0)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # serve_load's bundle store is a tempfile.mkdtemp
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_serve_load_plain_variant_prints_its_table_row(tmp_path):
    """bench/serve_load.py --variants plain (no Ray: the plain server is its own process), 0.5 s per load point."""
    out = run_bench(["bench/serve_load.py", "--variants", "plain", "--seconds", "0.5", "--clients", "1,2",
                     "--streams", "1", "--kill-seconds", "0"], tmp_path)
    assert re.search(r"^== plain  \[.*load average", out, re.M)  # uptime logged beside the variant
    points = re.findall(r"^  (text|image) +clients= ?(\d+)  p50= *([\d.]+) ms .* \(n=(\d+), errors=(\d+)\)$", out, re.M)
    assert [(k, c) for k, c, *_ in points] == [("text", "1"), ("text", "2"), ("image", "1"), ("image", "2")]
    for kind, c, p50, n, errors in points:
        assert float(p50) > 0 and int(n) >= 1 and errors == "0", (kind, c, out)
    ttft = re.search(r"^  text TTFT p50 ([\d.]+) ms$", out, re.M)
    assert ttft and 0 < float(ttft.group(1)) < 60_000
    lines = out.splitlines()
    head = lines.index("| variant | text p50/p99 ms c=1 | text p50/p99 ms c=2 | text req/s c=2 (batch) | "
                       "image p50/p99 ms c=1 | image p50/p99 ms c=2 | image req/s c=2 (batch) | TTFT p50 ms | replica kill |")
    assert lines[head + 1] == "|" + "---|" * 9
    row = [c.strip() for c in lines[head + 2].strip("|").split("|")]
    assert row[0] == "plain [-]" and len(row) == 9, row  # the plain server reports no Serve data plane
    assert re.fullmatch(r"\d+ / \d+", row[1]) and re.fullmatch(r"[\d.]+ 1\.00x \(1\.0\)", row[3]), row  # plain vs itself
    assert re.fullmatch(r"[\d.]+ 1\.00x \(1\.0\)", row[6]) and float(row[7]) == float(ttft.group(1)) and row[8] == "-"
    # the targets section compares other variants with plain: with plain alone it has no rows
    assert [ln for ln in lines[head + 3:] if ln.strip()] == ["targets (vs plain):"]
    store = [p for p in tmp_path.iterdir() if p.name.startswith("creagen-bench-")]
    assert len(store) == 1 and json.loads((store[0] / "plain.json").read_text())["text/2"]["err"] == 0
