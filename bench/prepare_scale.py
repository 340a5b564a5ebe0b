"""Benchmark: `creagen prepare` as a Ray Data pipeline vs the previous single-process path.

    .venv/bin/python bench/prepare_scale.py                 # 100 MB and 1 GB corpora
    .venv/bin/python bench/prepare_scale.py --sizes 100     # only 100 MB

For each size it writes a deterministic text corpus of many files (4 MiB each) into a temporary
folder, then prepares it (char tokenizer, seq_len 128) in a fresh process each time:
  - pipeline: `prepare_data` on a local Ray runtime of 2 CPUs (Ray start-up not counted; the
    start of Ray's worker processes and of Ray Data's per-cluster actors, which happens on the
    first Ray Data execution, is: the cold start of a one-off run);
  - pipeline-warm (up to --legacy-max-mb): the same after an untimed preparation of the corpus's
    first file on that runtime, so those processes are up, as on a running cluster;
  - single-process: the path this pipeline replaced, reimplemented minimally below (read every
    file into the driver, decode, fit the vocabulary, window with numpy, write Parquet with
    pyarrow). It holds the whole corpus several times over in memory (peak RSS 9.6 GB at 1 GB),
    so it runs only up to --legacy-max-mb (default 1000: lower it on a machine with less than
    about 12 GB of RAM).
Library imports (ray.data, which both paths use) happen before the clock starts in both paths.
The single-process path runs at nice 15, the niceness Ray gives its worker processes, where the
pipeline's work runs: on a shared machine other processes (nice 0) would otherwise take CPU from
the pipeline's workers far more than from the single process. On an idle machine niceness
changes nothing.
With --repeat N each path runs N times, alternating, and the median runs are compared.
Printed: seconds, MB/s, the driver's peak RSS (ru_maxrss of the process that calls prepare;
Ray's worker processes are not the driver), the ratios, and `uptime` beside every number.
Run it alone: on a shared 2-core machine other work distorts it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE_BYTES = 4 << 20
RAY_WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", 15))  # Ray's default for worker processes
WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can out up into do "
    "time who said about than its them then only could new some these two may first any like now my such our "
    "over man me even most made after also did many before must through years where much your way well down "
    "should because each just those people how too little state good very make world still see own men work "
    "long here get both between life being under never day same another know while last might us great old "
    "year off come since against go came right used take three café naïve — “quoted” ✓"
).split()


def uptime() -> str:
    """The load average, as `uptime` prints it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def make_corpus(folder: Path, mb: int, seed: int = 0) -> int:
    """Deterministic pseudo-English text files of 4 MiB (the last one shorter) totalling `mb` MB.

    An existing folder of the right total size is reused (the content depends only on mb, seed)."""
    import numpy as np

    total = mb * 1_000_000
    if folder.is_dir() and sum(p.stat().st_size for p in folder.iterdir()) == total:
        return total
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    words = [w + " " for w in WORDS]
    ends = [w + ".\n" for w in WORDS]
    written, i = 0, 0
    while written < total:
        want = min(FILE_BYTES, total - written)
        idx = rng.integers(0, len(WORDS), want // 4).tolist()  # ~5 bytes a word: enough for one file
        text = "".join((ends if j % 12 == 11 else words)[k] for j, k in enumerate(idx))
        raw = text.encode("utf-8")[:want]
        raw = raw[: len(raw.decode("utf-8", "ignore").encode("utf-8"))]  # end on a whole character
        (folder / f"part-{i:05d}.txt").write_bytes(raw)
        written += len(raw)
        i += 1
    return written


ADDRESS_ENV = "CREAGEN_PREPARE_SCALE_ADDRESS"  # --address, handed to the measuring subprocesses

def init_ray() -> None:
    """A private local Ray runtime of 2 CPUs (retried: on a loaded machine the raylet can miss
    Ray's fixed 30 s start-up deadline), or the running cluster --address names."""
    import ray

    address = os.environ.get(ADDRESS_ENV, "local")
    if address != "local":
        ray.init(address=address, log_to_driver=False)
        return
    for attempt in range(4):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 2**20, log_to_driver=False)
            return
        except Exception:  # noqa: BLE001  ("The current node timed out during startup")
            ray.shutdown()
            if attempt == 3:
                raise
            time.sleep(10)


def run_pipeline(corpus: str, out: str, warm: bool = False) -> dict:
    """In this (fresh) process: Ray Data pipeline on 2 CPUs.

    warm: first prepare the corpus's first file alone (not timed), so Ray's worker processes and
    Ray Data's per-cluster actors are up, as on a running cluster; cold: the clock includes them.
    """
    import ray
    import ray.data  # noqa: F401  (imported before the clock, as the single-process path does)

    from creagen_ray.config import DataConfig
    from creagen_ray.data import prepare_data

    init_ray()
    if warm:
        first = str(sorted(Path(corpus).iterdir())[0])
        prepare_data(DataConfig(source=first, seq_len=128, output_dir=f"{out}-warmup"), storage_path=out)
        shutil.rmtree(f"{out}-warmup")
    t0 = time.perf_counter()
    prepared = prepare_data(DataConfig(source=corpus, seq_len=128, output_dir=out), storage_path=out)
    seconds = time.perf_counter() - t0
    rows = prepared.num_rows("train") + prepared.num_rows("val")
    ray.shutdown()
    return {"seconds": seconds, "rows": rows}


def run_single_process(corpus: str, out: str) -> dict:
    """In this (fresh) process: the previous single-process path (whole corpus in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (the tensor extension type)
    from ray.data.extensions import ArrowTensorArray

    t0 = time.perf_counter()
    files = sorted(Path(corpus).iterdir())
    parts = []
    for p in files:  # as data/sources.py read_text_files did
        raw = p.read_bytes()
        if parts and not parts[-1].endswith(b"\n"):
            parts.append(b"\n")
        parts.append(raw)
    text = b"".join(parts).decode("utf-8")
    del parts
    chars = sorted(set(text))
    lookup = np.full(max(map(ord, chars)) + 1, -1, dtype=np.int32)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars), dtype=np.int32)
    ids = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    del text
    length, n_train = 129, int(len(ids) * 0.9)
    rows = 0
    for split, part in (("train", ids[:n_train]), ("val", ids[n_train:])):
        windows = np.lib.stride_tricks.sliding_window_view(part, length)[::128].copy()
        os.makedirs(f"{out}/{split}", exist_ok=True)
        for j, s in enumerate(range(0, len(windows), 20000)):
            pq.write_table(pa.table({"tokens": ArrowTensorArray.from_numpy(windows[s : s + 20000])}), f"{out}/{split}/{j:05d}.parquet")
        rows += len(windows)
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def child(mode: str, corpus: str, out: str) -> None:
    """Entry point of the measuring subprocess: prints one JSON line."""
    if mode == "single-process":
        os.nice(RAY_WORKER_NICENESS)  # the priority the pipeline's work runs at (see the module docstring)
    if mode == "single-process":
        result = run_single_process(corpus, out)
    else:
        result = run_pipeline(corpus, out, warm=mode == "pipeline-warm")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def measure(mode: str, corpus: Path, out: Path, address: str = "local") -> dict:
    """Run one preparation in a fresh Python process and return its numbers."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           ADDRESS_ENV: address}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(corpus), str(out)],
        capture_output=True, text=True, env=env, check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--legacy-max-mb", type=int, default=1000,
                    help="largest corpus for the single-process path and the warm run (the single process needs ~10x the corpus in RAM)")
    ap.add_argument("--workdir", default=None, help="where corpora go, kept for later runs (default: a temporary folder, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path, alternating; the median is compared")
    ap.add_argument("--address", default="local",
                    help="Ray for the pipeline runs: 'local' starts a private one each (the measurement), else a running "
                         "cluster's address (a smoke run: its workers may be up already, so cold and warm differ little)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prepare_scale-"))
    results = {}
    try:
        for mb in [int(s) for s in args.sizes.split(",")]:
            corpus = work / f"corpus-{mb}mb"
            t0 = time.perf_counter()
            size = make_corpus(corpus, mb)
            print(f"corpus {mb} MB: {size:,} bytes in {len(list(corpus.iterdir()))} files, made in {time.perf_counter() - t0:.1f} s", flush=True)
            # the warm run matters next to the single process; at larger sizes start-up is amortized
            modes = ["pipeline"] + (["pipeline-warm", "single-process"] if mb <= args.legacy_max_mb else [])
            runs: dict[str, list[dict]] = {m: [] for m in modes}
            for _ in range(args.repeat):  # alternating, so a change in load hits both paths alike
                for mode in modes:
                    before = uptime()
                    r = measure(mode, corpus, work / "out", args.address)
                    r.update(mb_per_s=size / 1e6 / r["seconds"], uptime_before=before, uptime_after=uptime())
                    runs[mode].append(r)
                    print(
                        f"  {mode:15} {r['seconds']:8.1f} s  {r['mb_per_s']:6.2f} MB/s  driver peak RSS {r['peak_rss_mb']:7.0f} MB  "
                        f"{r['rows']:,} rows   [{r['uptime_after']}]",
                        flush=True,
                    )
            for mode in modes:  # the median run (by time) stands for the mode
                results[(mb, mode)] = sorted(runs[mode], key=lambda r: r["seconds"])[(len(runs[mode]) - 1) // 2]
                if args.repeat > 1:
                    r = results[(mb, mode)]
                    print(f"  {mode:15} median of {args.repeat}: {r['seconds']:.1f} s  {r['mb_per_s']:.2f} MB/s  "
                          f"(all: {', '.join('%.1f' % x['seconds'] for x in runs[mode])} s)", flush=True)
            if not args.workdir:
                shutil.rmtree(corpus, ignore_errors=True)  # a --workdir keeps it for the next run
            for mode in ("pipeline", "pipeline-warm"):
                if (mb, "single-process") in results:
                    p, s = results[(mb, mode)], results[(mb, "single-process")]
                    print(f"  ratio {mode} / single-process: throughput {p['mb_per_s'] / s['mb_per_s']:.2f}x, "
                          f"driver peak RSS {p['peak_rss_mb'] / s['peak_rss_mb']:.2f}x", flush=True)
        sizes = sorted({mb for mb, _ in results})
        if len(sizes) > 1:
            a, b = results[(sizes[0], "pipeline")], results[(sizes[-1], "pipeline")]
            print(f"pipeline driver peak RSS {sizes[-1]} MB / {sizes[0]} MB: {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x "
                  f"({a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
