"""The bench/ scripts' documented commands, run as a user would (subprocess, repo root, relative paths), cut
to the smallest settings: a smoke run proves each script runs end to end and prints what docs/benchmarks.md
says it prints. Benchmarks are not timed tests: nothing here asserts a speed or a quality target. The commands of
BACKGROUND start with the module, on the session cluster, and run beside the other tests; their tests check them."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(args: list[str], tmp_path: Path, timeout: float = 300, env: dict | None = None) -> str:
    """`python bench/...` from the repo root; its temporary files under tmp_path; stdout (it must exit 0)."""
    env = {**os.environ, **(env or {}), "TMPDIR": str(tmp_path)}  # serve_load's bundle store is a tempfile.mkdtemp
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


GAPS_ARGS = ["bench/train_throughput.py", "--only", "gaps", "--epochs", "2", "--set", "data.max_items=2000",
             "--set", "data.labels=null"]


@pytest.fixture(scope="module")
def gaps_run(ray_cluster, tmp_path_factory) -> Future:
    """test_train_throughput_gaps_...'s command on the session cluster (--address), started in a thread: its output."""
    address = ray_cluster.get_runtime_context().gcs_address
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gaps-run") as pool:
        future = pool.submit(run_bench, [*GAPS_ARGS, "--address", address], tmp_path_factory.mktemp("gaps"))
        yield future
        future.exception()  # wait for it, whatever the tests did


QPT_ARGS = ["bench/quality_per_time.py", "--only", "vae", "--vae-budget", "1", "--samples", "100", "--judge-steps", "5",
            "--set", "train.num_workers=1"]


@pytest.fixture(scope="module")
def qpt_run(ray_cluster, mnist_paths, tmp_path_factory) -> tuple[Future, Path]:
    """test_quality_per_time_...'s command on the session cluster (--address), started in a thread: (its output,
    its folder; results under <folder>/qpt)."""
    address = ray_cluster.get_runtime_context().gcs_address
    tmp = tmp_path_factory.mktemp("qpt")
    env = {"CREAGEN_SHARED_DATA": str(mnist_paths[0].parent.parent)}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qpt-run") as pool:
        future = pool.submit(run_bench, [*QPT_ARGS, "--address", address, "--out", str(tmp / "qpt")], tmp, env=env)
        yield future, tmp
        future.exception()  # wait for it, whatever the tests did


BACKGROUND = {"test_train_throughput_gaps_reports_both_modes": "gaps_run",
              "test_quality_per_time_vae_scores_both_sides_and_prints_ratios": "qpt_run"}


@pytest.fixture(scope="module", autouse=True)
def _start_background_runs(request: pytest.FixtureRequest) -> None:
    """Start the selected tests' commands with the module (BACKGROUND): the gaps command's two Train runs (2 x 0.5
    CPU) and the quality-per-time run (one Train worker, 0.5 CPU; the rest one process, about one core) run beside
    the tests before theirs, which leave a core idle much of the time (text_quality and the single-process paths
    train on one thread), and beside each other, rather than one after another at the end."""
    selected = {getattr(item, "originalname", None) for item in request.session.items}
    for test, fixture in BACKGROUND.items():
        if test in selected:
            try:
                request.getfixturevalue(fixture)
            except pytest.skip.Exception:
                pass  # ../shared/data absent: the test skips with the same reason when it asks for the run


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
                     "--char-gan", "--n", "4", "--lm-steps", "2", "--prepared", str(prepared.path),
                     "--seed", "1", "--also-temperatures", "0.7", "--latent-scales", "1", "0.5",
                     "--train-codes", "--free-bits", "2.0", "--gan-lr", "1e-3",  # docs/benchmarks.md's settings
                     "--gan", "vae.free_bits=4.0",  # the latent GAN on its own VAE: that VAE's prior gets rows too
                     # the docstring's per-row temperatures, plus a longer prefix that wins and a greedy bundle row
                     "--row-temperature", "char RNN=0.7", "--row-temperature", "sentence VAE=0",
                     "--row-temperature", "text GAN=0", "--row-temperature", "text GAN (char)=1.5",
                     "--row-temperature", "mine=0"], tmp_path)
    lines = out.splitlines()
    cols = ["lm_score", "lm_se", "reverse_lm_score", "bleu4", "self_bleu4", "novelty8"]
    head = lines.index("| samples | temperature | " + " | ".join(cols) + " |")
    rows, temps = {}, {}
    for ln in lines[head + 2:]:
        if not ln.startswith("| "):
            break
        label, temp, *cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[label], temps[label] = dict(zip(cols, map(float, cells), strict=True)), temp
    # the latent GAN decodes with its own VAE (free bits 4): decoding rows and a prior row for each VAE
    scaled = [f"{row} x{s}" for s in (1, 0.5) for row in
              ("sentence VAE (prior) z", "text GAN (latent) noise", "text GAN's VAE (prior) z")]
    assert list(rows) == ["real held-out", "mine", "char RNN", "sentence VAE (prior)", "sentence VAE decoding held-out codes",
                          "sentence VAE decoding train codes", "text GAN (latent)", "text GAN decoding held-out codes",
                          "text GAN decoding train codes", "text GAN (char)", "text GAN's VAE (prior)", *scaled]
    want = {"mine": 0.0, "char RNN": 0.7, "sentence VAE (prior)": 0.0, "sentence VAE decoding held-out codes": 0.0,
            "sentence VAE decoding train codes": 0.0, "text GAN (latent)": 0.0, "text GAN decoding held-out codes": 0.0,
            "text GAN decoding train codes": 0.0, "text GAN (char)": 1.5, "text GAN's VAE (prior)": 0.0,
            **{k: 0.0 for k in scaled}}
    # --latent-scales: at scale 1 the same draws as the model's own row, so the same samples and scores
    for model, same in zip(("sentence VAE (prior)", "text GAN (latent)", "text GAN's VAE (prior)"), scaled[:3], strict=True):
        for c in ("lm_score", "bleu4", "self_bleu4", "novelty8"):
            assert rows[same][c] == rows[model][c], (same, c, rows[same], rows[model])
    assert temps == {"real held-out": "-", **{k: str(t) for k, t in want.items()}}, temps
    # greedy and no latent: the untrained RNN writes the same window from every seed (at T 1 the 4 would differ)
    assert rows["mine"]["lm_se"] == 0, rows["mine"]
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
    assert (record["n"], record["lm_steps"], record["train_steps"], record["gan_steps"], record["seed"]) == (4, 2, 2, 2, 1)
    assert record["temperature"] == 1.0 and record["row_temperatures"] == want, record["row_temperatures"]
    assert record["latent_scales"] == [1.0, 0.5]
    assert (record["free_bits"], record["gan_lr"], record["gan"], record["vae"]) == (2.0, 1e-3, ["vae.free_bits=4.0"], [])
    for label in ("sentence VAE (prior)", "text GAN (latent)"):  # each VAE's own latent-use line
        assert re.search(rf"^{re.escape(label)} latent use \(held-out, nats/char\): \{{", out, re.M), label
    # --also-temperatures 0.7: every generator row scored again at 0.7, printed and in the JSON
    assert "temperature 0.7 (every generator row; real held-out unchanged)" in out
    also = record["also_temperatures"]["0.7"]
    assert set(also) == set(rows), also  # real held-out too (its numbers unchanged)
    assert all(m["lm_score"] > 0 and 0 <= m["novelty8"] <= 1 for m in also.values()), also
    # matched self-BLEU: each text GAN's points (its row and scaled rows, greedy and at 0.7) against each prior's
    # front, read off the same rows' scores
    from creagen_ray.metrics.text import lm_at_self_bleu

    priors = ("sentence VAE (prior)", "text GAN's VAE (prior)")
    matched = record["matched"]
    # and each VAE's decoded codes (a latent GAN's target, and held-out windows') as if they were a GAN's points
    gans = ("text GAN (latent)", "text GAN (char)", *(f"{m} decoding {c} codes" for m in ("sentence VAE", "text GAN")
                                                      for c in ("train", "held-out")))
    assert set(matched) == {f"{g} vs {v}" for g in gans for v in priors}, matched
    tables = [record["table"], also]
    for v in priors:
        front = [(t[k]["self_bleu4"], t[k]["lm_score"]) for t in tables for k in t
                 if k == v or k.startswith(f"{v} z x")]
        assert len(front) == 6
        # the latent GAN: its row and the x1, x0.5 rows, greedy and at 0.7; the char GAN: its row at 1.5 and 0.7
        wheres = {"text GAN (latent)": [f"x{s} T{t}" for s in ("1", "1", "0.5") for t in ("0", "0.7")],
                  "text GAN (char)": ["x1 T1.5", "x1 T0.7"], "text GAN decoding train codes": ["x1 T0", "x1 T0.7"],
                  "text GAN decoding held-out codes": ["x1 T0", "x1 T0.7"],
                  "sentence VAE decoding train codes": ["x1 T0", "x1 T0.7"],
                  "sentence VAE decoding held-out codes": ["x1 T0", "x1 T0.7"]}
        for g, where in wheres.items():
            pts = matched[f"{g} vs {v}"]
            assert sorted(p["where"] for p in pts) == sorted(where), pts
            for p in pts:
                want = lm_at_self_bleu(front, p["self_bleu4"])
                assert p["other"] == pytest.approx(want, abs=1e-4, nan_ok=True), (p, front)
                assert math.isnan(want) or p["diff"] == pytest.approx(p["lm_score"] - want, abs=2e-4), p
    assert re.search(r"^text GAN \(latent\) vs sentence VAE \(prior\): x\S+ T\S+ \d\.\d{3} / ", out, re.M)
    assert "load average" in record["uptime"] and record["seconds"] > 0


@pytest.mark.slow
def test_prepare_scale_compares_the_three_paths(ray_cluster, tmp_path):
    """bench/prepare_scale.py --sizes 1 (its docstring's command at 1 MB; corpora under --workdir; the pipeline runs
    on the session cluster, --address: two private Ray starts fewer, ~15 CPU-s): the pipeline cold and warm and the
    single-process path each prepare the same rows, and both ratio lines are printed."""
    address = ray_cluster.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "bench/prepare_scale.py", "--sizes", "1", "--workdir", str(tmp_path),
                        "--address", address], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout
    assert re.search(r"^corpus 1 MB: 1,000,000 bytes in 1 files", out, re.M), out
    paths = dict(re.findall(r"^  (pipeline|pipeline-warm|single-process) +[\d.]+ s +[\d.]+ MB/s  driver peak RSS +\d+ MB  "
                            r"([\d,]+) rows   \[.*load average", out, re.M))
    assert set(paths) == {"pipeline", "pipeline-warm", "single-process"}, out
    assert len(set(paths.values())) == 1 and int(paths["pipeline"].replace(",", "")) > 0, paths  # the same windows
    for name in ("pipeline", "pipeline-warm"):
        assert re.search(rf"^  ratio {name} / single-process: throughput [\d.]+x, driver peak RSS [\d.]+x$", out, re.M), out


def json_tail(out: str) -> dict:
    """The JSON object a script prints last (indented: from its opening `{` line to the end)."""
    lines = out.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln == "{")
    return json.loads("\n".join(lines[start:]))


@pytest.mark.slow
def test_train_throughput_rnn_row_and_its_ratio(ray_cluster, tmp_path):
    """bench/train_throughput.py --only throughput (the throughput table of its plain command, whose RNN ray x1 / plain
    ratio is docs/benchmarks.md's target row) cut to the RNN row's plain loop and its one-worker Ray Train run, 10
    steps, on the session cluster (--address: no Ray start of its own; the x2 run is the same code with 2 workers):
    both rates measured, the printed ratio is theirs, and the JSON holds the same numbers."""
    address = ray_cluster.get_runtime_context().gcs_address
    out = run_bench(["bench/train_throughput.py", "--only", "throughput", "--models", "rnn", "--workers", "1",
                     "--steps", "10", "--address", address], tmp_path)
    row = re.search(r"^rnn  tokens/s  plain +([\d,]+) \| ray x1 +([\d,]+) \(([\d.]+)x plain\) \| data wait ([\d.]+)% "
                    r"\| first report after (\d+) s$", out, re.M)
    assert row, out[-3000:]
    plain, one, ratio = (float(v.replace(",", "")) for v in row.groups()[:3])
    assert plain > 0 and one > 0 and ratio == pytest.approx(one / plain, abs=0.01 + 1e-3 * one / plain), row.group(0)
    result = json_tail(out)
    assert set(result) == {"load_avg_start", "rnn", "load_avg_end"}, list(result)  # --models rnn: no GAN row
    rnn = result["rnn"]
    assert set(rnn) == {"model", "unit", "plain", "ray_1", "ray1_over_plain", "wait_share_1", "startup_s_1", "wall_s_1"}
    assert rnn["unit"] == "tokens/s" and rnn["ray1_over_plain"] == pytest.approx(rnn["ray_1"] / rnn["plain"])
    assert (f"{rnn['plain']:,.0f}", f"{rnn['ray_1']:,.0f}") == (row.group(1), row.group(2))  # the row prints them
    assert 0 <= rnn["wait_share_1"] <= 1 and 0 < rnn["startup_s_1"] < rnn["wall_s_1"]
    assert float(row.group(4)) == pytest.approx(100 * rnn["wait_share_1"], abs=0.051)


@pytest.mark.slow
def test_quality_per_time_vae_scores_both_sides_and_prints_ratios(qpt_run):
    """bench/quality_per_time.py --only vae --vae-budget ... (docs/benchmarks.md's smoke run) cut further: a 1 s budget,
    100 samples a side, a 5-step judge, the project's `creagen train jobs/configs/vae-mnist.yaml` (from the root) on
    one worker of the session cluster (QPT_ARGS; qpt_run started it with the module): both sides trained and scored,
    the table's rows, the ratios of the scores, the grid. That run is also vae-mnist.yaml's shipped-config check
    (tests/test_shipped_configs.py, TRAINED_ELSEWHERE): it printed its bundle's path, the bundle verifies, the data
    was prepared under storage_path."""
    future, tmp = qpt_run
    out, out_dir = future.result(), tmp / "qpt"
    assert re.search(r"^judge: creagen FeatureNet trained here on 8,000 train images, 5 steps; eval accuracy [01]\.\d{3} ",
                     out, re.M), out[-3000:]
    (row,) = json.loads((out_dir / "results.json").read_text())
    ref, proj = row["ref"], row["proj"]
    assert row["model"] == "vae" and row["budget_s"] == 1.0 and Path(row["grid"]) == out_dir / "vae-grid.png"
    assert Path(row["grid"]).is_file()
    # the reference side: bench/reference/vae.py --budget 1 (its own checks in tests/test_quality.py moved here)
    assert ref["steps"] >= 1 and ref["train_s"] >= 1.0 and ref["eval_images"] == proj["eval_images"] == 2000
    import torch

    samples = torch.load(out_dir / "ref-vae" / "samples.pt")
    assert samples.shape == (100, 1, 28, 28) and samples.dtype == torch.uint8
    assert proj["steps"] >= 1 and Path(proj["bundle"]).parent.parent == out_dir / "runs"  # the run's bundle, scored
    from creagen_ray.bundle import load_bundle

    assert f"bundle: {proj['bundle']}" in (out_dir / "project-vae.log").read_text()  # the command's own line
    loaded = load_bundle(proj["bundle"])  # verifies every file's sha256
    assert loaded.metrics["time_s"] >= 1.0 and (out_dir / "runs" / "data").is_dir()  # it ran to its 1 s budget
    for side in (ref, proj):
        assert side["neg_elbo"] > 0 and side["fcd"] > 0 and 0 <= side["precision"] <= 1 and 0 <= side["recall"] <= 1
    lines = out.splitlines()
    head = lines.index(f"{'model':6} {'side':5} {'steps':>6} {'train s':>7} {'wall s':>6} {'-ELBO':>6} {'fcd':>7} "
                       f"{'prec':>5} {'rec':>5} {'max cls':>7}")
    for line, side in zip(lines[head + 1 : head + 3], (ref, proj), strict=True):
        cells = line.split()
        assert cells[0] == "vae" and float(cells[5]) == pytest.approx(side["neg_elbo"], abs=0.051), (line, side)
        assert float(cells[6]) == pytest.approx(side["fcd"], abs=0.051) and cells[2] == str(side["steps"]), line
    ratio = re.fullmatch(r"vae    ratio project/reference: fcd ([\d.]+), -ELBO ([\d.]+), precision ([\d.]+), "
                         r"recall ([\d.]+)   grid (.+)", lines[head + 3])
    assert ratio and ratio.group(5) == row["grid"], lines[head + 3]
    assert float(ratio.group(1)) == pytest.approx(proj["fcd"] / ref["fcd"], abs=0.006)
    assert float(ratio.group(2)) == pytest.approx(proj["neg_elbo"] / ref["neg_elbo"], abs=6e-4)


@pytest.mark.slow
def test_train_throughput_gaps_reports_both_modes(gaps_run):
    """bench/train_throughput.py --only gaps (its docstring's second command) cut to 2 epochs of 2,000 items, MNIST
    without its labels (no FeatureNet fit for the final evaluation, which the gaps do not need), on the session
    cluster (GAPS_ARGS; gaps_run started it with the module, beside the other tests: the gaps it prints are then not
    a measurement, nor asserted): the materialized and the streamed run each print their line and report their
    data_mode, and the JSON holds each run's epoch-boundary gaps (one per rank and epoch boundary), the numbers the
    lines print."""
    out = gaps_run.result()
    found = re.findall(r"^epoch gap  (materialized|streaming) +\(data_mode (\w+)\): max +([\d.]+) ms, "
                       r"median +([\d.]+) ms over (\d+) rank-epochs; run \d+ s; load [\d.]+$", out, re.M)
    lines = {label: rest for label, *rest in found}
    assert list(lines) == ["materialized", "streaming"], out[-3000:]
    result = json_tail(out)
    assert set(result) == {"load_avg_start", "epoch_gaps", "load_avg_end"}, list(result)  # --only gaps: no table
    gaps = result["epoch_gaps"]
    assert list(gaps) == ["materialized", "streaming"], gaps
    for label, run in gaps.items():
        mode, max_ms, median_ms, n = lines[label]
        assert mode == run["data_mode"] == label, (label, run)  # 256 MiB materializes the split, 0 streams it
        assert len(run["gaps_s"]) == int(n) == 2, run  # 2 workers x 1 epoch boundary
        assert all(g >= 0 for g in run["gaps_s"]) and run["max_s"] == max(run["gaps_s"]), run
        assert float(max_ms) == pytest.approx(1000 * run["max_s"], abs=0.051)
        assert float(median_ms) == pytest.approx(1000 * run["median_s"], abs=0.051) and run["wall_s"] > 0
