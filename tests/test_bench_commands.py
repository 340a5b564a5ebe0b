"""The bench/ scripts' documented commands, run as a user would (subprocess, repo root, relative paths), cut
to the smallest settings: a smoke run proves each script runs end to end and prints what docs/benchmarks.md
says it prints. Benchmarks are not timed tests: nothing here asserts a speed or a quality target."""

from __future__ import annotations

import ast
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


@pytest.mark.slow
def test_text_quality_trains_scores_and_prints_the_table(ray_cluster, tmp_path):
    """bench/text_quality.py --train with tiny settings on a folder prepared beforehand (--prepared: the script
    then starts no Ray of its own; the folder is prepared here on the session cluster from a 20,000-char slice of
    builtin:python-docs, the default corpus), with one bundle argument: every generator row, the table, the latent-use line and the JSON."""
    from creagen_ray.config import DataConfig
    from creagen_ray.data import prepare_data
    from creagen_ray.data.builtin import python_docs_text

    (tmp_path / "docs.txt").write_text(python_docs_text()[:20_000])
    prepared = prepare_data(DataConfig(source=str(tmp_path / "docs.txt"), seq_len=32), str(tmp_path / "store"))
    # a bundle argument too (label=bundle_dir, the docstring's first form): an untrained char RNN on this data
    from creagen_ray.bundle import write_bundle
    from creagen_ray.config import ExperimentConfig
    from creagen_ray.families import build_family

    cfg = ExperimentConfig(data=DataConfig(source=str(tmp_path / "docs.txt"), seq_len=32),
                           model={"family": "rnn", "hidden_size": 32, "num_layers": 1})
    write_bundle(build_family(cfg, prepared.spec, tokenizer=prepared.tokenizer), tmp_path / "rnn-bundle")
    out = run_bench(["bench/text_quality.py", f"mine={tmp_path / 'rnn-bundle'}", "--train", "2", "--gan-steps", "2",
                     "--char-gan", "--n", "4", "--lm-steps", "2", "--prepared", str(prepared.path)], tmp_path)
    lines = out.splitlines()
    cols = ["lm_score", "lm_se", "reverse_lm_score", "bleu4", "self_bleu4", "novelty8"]
    head = lines.index("| samples | " + " | ".join(cols) + " |")
    rows = {}
    for ln in lines[head + 2:]:
        if not ln.startswith("| "):
            break
        label, *cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[label] = dict(zip(cols, map(float, cells), strict=True))
    # the latent GAN decodes with a copy of the VAE row's weights: one "decoding held-out codes" row for both
    assert list(rows) == ["real held-out", "mine", "char RNN", "sentence VAE (prior)", "sentence VAE decoding held-out codes",
                          "text GAN (latent)", "text GAN (char)"]
    for label, m in rows.items():
        assert m["lm_score"] > 0 and m["reverse_lm_score"] > 0 and m["lm_se"] >= 0, (label, m)
        assert 0 <= m["bleu4"] <= 1 and 0 <= m["self_bleu4"] <= 1 and 0 <= m["novelty8"] <= 1, (label, m)
    for label in ("char RNN", "sentence VAE (prior)", "text GAN (latent)", "text GAN (char)"):
        assert re.search(rf"^{re.escape(label)}: \d+ steps in \d+ s, last \{{", out, re.M), label
    for label in rows:
        assert any(ln.startswith(f"{label} sample: '") for ln in lines), label
    use = re.search(r"^sentence VAE \(prior\) latent use \(held-out, nats/char\): (\{.*\})$", out, re.M)
    assert use and set(ast.literal_eval(use.group(1))) == {"own_code", "other_code", "zero_code", "kl_nats"}
    record = json.loads(lines[-1])
    assert (record["n"], record["lm_steps"], record["train_steps"], record["gan_steps"]) == (4, 2, 2, 2)
    assert "load average" in record["uptime"] and record["seconds"] > 0


@pytest.mark.slow
def test_prepare_scale_compares_the_three_paths(tmp_path):
    """bench/prepare_scale.py --sizes 1 (its docstring's command at 1 MB; corpora under --workdir): the pipeline
    cold and warm and the single-process path each prepare the same rows, and both ratio lines are printed."""
    r = subprocess.run([sys.executable, "bench/prepare_scale.py", "--sizes", "1", "--workdir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout
    assert re.search(r"^corpus 1 MB: 1,000,000 bytes in 1 files", out, re.M), out
    paths = dict(re.findall(r"^  (pipeline|pipeline-warm|single-process) +[\d.]+ s +[\d.]+ MB/s  driver peak RSS +\d+ MB  "
                            r"([\d,]+) rows   \[.*load average", out, re.M))
    assert set(paths) == {"pipeline", "pipeline-warm", "single-process"}, out
    assert len(set(paths.values())) == 1 and int(paths["pipeline"].replace(",", "")) > 0, paths  # the same windows
    for name in ("pipeline", "pipeline-warm"):
        assert re.search(rf"^  ratio {name} / single-process: throughput [\d.]+x, driver peak RSS [\d.]+x$", out, re.M), out
