"""The outputs of a search: a ranked results table (Parquet + CSV), the best config, the bundle.

`<storage>/tune/<name>/` holds, next to Tune's own experiment files:
    results.parquet, results.csv   one row per trial: rank, trial_id, status, error, every sampled
                                   field (its dotted path), iterations, step, final and best metric,
                                   final train loss and live lr, seconds
    best.yaml                      the best trial's full config: no distributions, ready for `creagen train`
    best_bundle/                   the best trial's generator bundle (from its last checkpoint)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

# Tune statuses, plus STOPPED: ended by the scheduler (ASHA) before its last step
FINISHED = ("TERMINATED", "STOPPED")


@dataclass
class TrialRow:
    """One trial's line of the results table."""

    trial_id: str
    status: str
    error: str
    sample: dict[str, Any]
    iterations: int
    step: int | None
    final: float | None
    best: float | None
    loss: float | None
    lr: float | None
    seconds: float | None


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def short_error(err: Any, limit: int = 300) -> str:
    """The last meaningful line of a trial's error (Tune wraps the cause in a long traceback)."""
    if err is None:
        return ""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    keys = ("Error:", "Error(", "Diverged:", "Exception:")
    picked = next((ln for ln in reversed(lines) if any(k in ln for k in keys)), lines[-1] if lines else "")
    return picked[:limit]


def _trials_by_path(result_grid: Any) -> dict[str, Any]:
    """Tune's Trial objects (id, status) by trial directory; a Result alone has no status."""
    return {str(t.path): t for t in result_grid._experiment_analysis.trials}


def trial_id_of(result_grid: Any, result: Any) -> str:
    """The Tune trial id of one Result (also for a trial that failed before its first report)."""
    trial = _trials_by_path(result_grid).get(str(result.path))
    return str(trial.trial_id if trial is not None else (result.metrics or {}).get("trial_id", Path(result.path).name))


def saved_statuses(exp_dir: Path) -> dict[str, str]:
    """Trial id -> status in Tune's newest experiment state file.

    After an interrupt (Ctrl-C) Tune saves the state first and then stops the running trials,
    marking them TERMINATED in memory; the saved state keeps RUNNING, which is what --resume sees.
    """
    files = sorted(exp_dir.glob("experiment_state-*.json"))  # named by start time; mtimes get touched on sync
    if not files:
        return {}
    out = {}
    for entry in json.loads(files[-1].read_text(encoding="utf-8")).get("trial_data", []):
        state = json.loads(entry[0])
        out[str(state["trial_id"])] = str(state["status"])
    return out


def trial_rows(result_grid: Any, metric: str, mode: str, dims: list[str], exp_dir: Path) -> list[TrialRow]:
    """Read every trial of a Tune ResultGrid into rows (status as saved in the experiment state)."""
    trials = _trials_by_path(result_grid)
    saved = saved_statuses(exp_dir)
    rows = []
    for r in result_grid:
        m = r.metrics or {}
        trial = trials.get(str(r.path))
        trial_id = trial.trial_id if trial is not None else m.get("trial_id", Path(r.path).name)
        history = r.metrics_dataframe
        series = history[metric].dropna() if history is not None and metric in history else pd.Series(dtype=float)
        best = (series.min() if mode == "min" else series.max()) if len(series) else None
        status = saved.get(str(trial_id)) or (trial.status if trial is not None else "TERMINATED")
        # a trial interrupted (Ctrl-C) before its first result has no result.json: Tune's Result then
        # carries no config, the Trial still does
        config = r.config or (trial.config if trial is not None else None) or {}
        if r.error is not None:
            status = "ERROR"
        elif status == "TERMINATED" and "total_steps" in m and m.get("step", 0) < m["total_steps"]:
            status = "STOPPED"  # ended by the scheduler before its last step
        rows.append(
            TrialRow(
                trial_id=str(trial_id),
                status=status,
                error=short_error(r.error),
                sample={k: config.get(k) for k in dims},
                iterations=int(m.get("training_iteration", 0) or 0),
                step=int(m["step"]) if "step" in m else None,
                final=_num(m.get(metric)),
                best=_num(best),
                loss=_num(m.get("loss")),
                lr=_num(m.get("lr")),
                seconds=_num(m.get("time_total_s")),
            )
        )
    return rows


def rank_rows(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Finished trials with a final metric first (best first), then the rest (errors last)."""

    def key(r: TrialRow) -> tuple:
        has = r.final is not None and r.status in FINISHED
        v = r.final if r.final is not None else math.inf
        return (not has, r.status == "ERROR", v if mode == "min" else -v)

    return sorted(rows, key=key)


def table(rows: list[TrialRow], metric: str) -> pd.DataFrame:
    """The ranked rows as a DataFrame (what results.parquet / results.csv hold)."""
    records = []
    for i, r in enumerate(rows, 1):
        rec: dict[str, Any] = {"rank": i, "trial_id": r.trial_id, "status": r.status}
        rec.update({k: (str(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in r.sample.items()})
        rec.update(
            {
                "iterations": r.iterations,
                "step": r.step,
                metric: r.final,
                f"best_{metric}": r.best,
                "loss": r.loss,
                "lr_live": r.lr,
                "seconds": r.seconds,
                "error": r.error,
            }
        )
        records.append(rec)
    return pd.DataFrame.from_records(records)


def write_table(df: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """Write results.parquet and results.csv into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pq, csv = out_dir / "results.parquet", out_dir / "results.csv"
    df.to_parquet(pq, index=False)
    df.to_csv(csv, index=False)
    return pq, csv


def markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A Markdown table of the results (docs/tuning.md, summaries); no extra dependency."""
    cols = [c for c in df.columns if c != "error" or df["error"].astype(bool).any()]

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df[cols].iterrows():
        lines.append("| " + " | ".join(cell(row[c]) for c in cols) + " |")
    return "\n".join(lines)


@dataclass
class TuneResult:
    """What a finished (or interrupted) search left behind."""

    name: str
    experiment_dir: Path
    metric: str
    mode: str
    table: pd.DataFrame
    results_parquet: Path
    results_csv: Path
    best_config_path: Path | None
    bundle_path: Path | None
    best_trial_id: str | None
    seconds: float
    dims: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # trials left unfinished (Ctrl-C): no best.yaml / best_bundle written

    def summary(self) -> str:
        """The ranked table, the best config and bundle paths (what `creagen tune` prints last)."""
        counts = self.table["status"].value_counts().to_dict() if len(self.table) else {}
        out = [
            f"search {self.name}: {len(self.table)} trials {counts} in {self.seconds:.0f} s, "
            f"ranked by final {self.metric} ({self.mode})",
            markdown(self.table),
            f"results: {self.results_parquet} and {self.results_csv}",
            f"best trial: {self.best_trial_id}",
            f"best config: {self.best_config_path}",
            f"bundle: {self.bundle_path}",
        ]
        unfinished = int(self.table["status"].isin(["RUNNING", "PENDING", "PAUSED"]).sum()) if len(self.table) else 0
        if self.interrupted:
            out.append(
                f"interrupted: {unfinished} trial(s) unfinished, others not started; no best config or bundle "
                "written; continue with `creagen tune CONFIG --resume`"
            )
        return "\n".join(out)
