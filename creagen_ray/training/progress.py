"""Progress for `creagen train`: step/total, losses, val metric, throughput, ETA, checkpoints.

`ProgressCallback` is a Ray Train `UserCallback`: it runs in the Train controller (one place that
sees every rank's report) and sums the ranks' throughput. Without an events file it prints one
plain line per report (Ray forwards the controller's stdout to the driver: Tune trials, library
callers). With one (`ProgressDisplay.path`), it appends the report there and the driver's
`ProgressDisplay` draws it: one tqdm bar on a terminal, one plain line per report otherwise (logs,
pipes, tests). Ray Train V2 pins the controller to the driver's node, so a local file reaches it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from typing import Any, TextIO

from ray.train import UserCallback


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(max(0, round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def format_progress(
    name: str, metrics: list[dict[str, Any]], unit: str, checkpoint: bool, shown: tuple[str, ...] = ("loss",)
) -> str:
    """One progress line from every rank's metrics (rank 0's `shown` metrics, summed throughput)."""
    m = metrics[0]
    step, total = int(m.get("step", 0)), int(m.get("total_steps", 0))
    if m.get("nonfinite"):
        return f"[{name}] step {step}/{total}  STOPPED: {m.get('nonfinite_what', 'non-finite loss')}"
    parts = [f"[{name}] step {step}/{total}" + (f" ({100 * step / total:.0f}%)" if total else "")]
    parts += [f"{k} {float(m[k]):.4f}" for k in shown if k in m]
    rate = sum(float(r.get("items_per_s", 0.0)) for r in metrics)
    parts.append(f"{rate:,.0f} {unit}/s")
    steps_per_s = float(m.get("steps_per_s", 0.0))
    if steps_per_s > 0 and total > step:
        parts.append(f"eta {format_duration((total - step) / steps_per_s)}")
    if checkpoint:
        parts.append("checkpoint")
    return "  ".join(parts)


def format_postfix(metrics: list[dict[str, Any]], unit: str, shown: tuple[str, ...]) -> str:
    """The bar's right-hand side: rank 0's `shown` metrics and the summed throughput."""
    m = metrics[0]
    parts = [f"{k} {float(m[k]):.4f}" for k in shown if k in m]
    parts.append(f"{sum(float(r.get('items_per_s', 0.0)) for r in metrics):,.0f} {unit}/s")
    return "  ".join(parts)


class ProgressCallback(UserCallback):
    """Report progress after every report (runs in the Ray Train controller): a line, or an event for the driver."""

    def __init__(self, name: str, unit: str, shown: tuple[str, ...] = ("loss",), events: str | None = None) -> None:
        self.name = name
        self.unit = unit
        self.shown = shown  # the family's progress_metrics
        self.warned: set[str] = set()
        self.events = events  # ProgressDisplay's file on the driver's node; None: print

    def _emit(self, line: str, **event: Any) -> None:
        if self.events is None:
            print(line, flush=True)
            return
        with open(self.events, "a", encoding="utf-8") as f:
            f.write(json.dumps({"line": line, **event}) + "\n")

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Called by Ray Train once all ranks reported."""
        warning = metrics[0].get("resume_warning") if metrics else None
        if warning and warning not in self.warned:  # a corrupt latest checkpoint was skipped on resume
            self.warned.add(warning)
            self._emit(f"[{self.name}] WARNING: {warning}")
        if metrics:
            m = metrics[0]
            self._emit(
                format_progress(self.name, metrics, self.unit, checkpoint is not None, self.shown),
                step=int(m.get("step", 0)),
                total=int(m.get("total_steps", 0)),
                postfix=format_postfix(metrics, self.unit, self.shown) + ("  checkpoint" if checkpoint is not None else ""),
            )

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """Say which rank failed and that Ray Train decides whether to restart from a checkpoint."""
        for rank, err in sorted(worker_exceptions.items()):
            self._emit(f"[{self.name}] worker {rank} failed: {type(err).__name__}: {err}")


class ProgressDisplay:
    """The driver's view of one run: a tqdm bar on a terminal, else one plain line per report.

        with ProgressDisplay(name) as display:
            trainer = build_trainer(..., progress_events=display.path)
            trainer.fit()
    """

    def __init__(self, name: str, stream: TextIO | None = None, poll_s: float = 0.2) -> None:
        self.name = name
        self.stream = stream or sys.stdout
        self.poll_s = poll_s
        fd, self.path = tempfile.mkstemp(prefix="creagen-progress-", suffix=".jsonl")
        os.close(fd)
        self._offset = 0
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="creagen-progress", daemon=True)

    def __enter__(self) -> "ProgressDisplay":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        if self._bar is not None:
            self._bar.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._drain()

    def _drain(self) -> None:
        """Show every complete event appended since the last call."""
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]
        self._offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            self._show(json.loads(line))

    def _show(self, event: dict[str, Any]) -> None:
        if not self.stream.isatty() or "step" not in event:
            if self._bar is not None:
                self._bar.write(event["line"], file=self.stream)
            else:
                print(event["line"], file=self.stream, flush=True)
            return
        from tqdm import tqdm

        if self._bar is None or self._bar.total != event["total"]:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=event["total"] or None, desc=self.name, unit="step", file=self.stream, dynamic_ncols=True)
        self._bar.n = event["step"]
        self._bar.set_postfix_str(event["postfix"], refresh=False)
        self._bar.refresh()


class MetricsLogCallback(UserCallback):
    """Append every report of every rank to a JSON-lines file (one line per report: all ranks).

    Runs in the Train controller, so `path` must be on a filesystem that process can write
    (local runs, or a shared mount). Benchmarks and tests read it to see what each rank did.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Write one line: {"ranks": [metrics of rank 0, rank 1, ...], "checkpoint": path or null}."""
        import json

        line = {"ranks": metrics, "checkpoint": checkpoint.path if checkpoint is not None else None}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
