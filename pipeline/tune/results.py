"""What a finished sweep leaves: the results table, the best trial's network, the compare rows,
the report; finished trials pruned to their best and last checkpoints.

Example (the summary a finished sweep logs):

    >>> from pipeline.tune.results import SweepResult
    >>> best = {"trial": "unfreeze-0-1a2b", "metric": "val_accuracy", "best": 0.83,
    ...         "unfreeze": "0"}
    >>> print(SweepResult("runs/tune/s", [best], best, "runs/tune/s/best/model",
    ...                   "runs/tune/s/report.html", seconds=27).summary())
    sweep: 1 trials in 27 s (featurize 0 s); best unfreeze-0-1a2b: val_accuracy 0.8300 (unfreeze 0)
    sweep: best model runs/tune/s/best/model, report runs/tune/s/report.html
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field

import pandas as pd

from pipeline.net.saving import load
from pipeline.runs import report
from pipeline.runs.storage import checkpoint_uri
from pipeline.settings import COMPARE_ROWS, SweepConfig
from pipeline.train.evaluate import evaluate
from pipeline.tune.plan import SweepPlan
from pipeline.tune.trials import Trials, best_checkpoint, trial_depth

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep left: one row per trial, the best trial's exported network, the report."""

    path: str
    table: list[dict]
    best: dict
    best_model: str
    report: str
    compare: list[dict] = field(default_factory=list)
    featurize_seconds: float = 0.0
    seconds: float = 0.0
    mode: str = "max"

    def summary(self) -> str:
        lines = [
            f"sweep: {len(self.table)} trials in {self.seconds:.0f} s (featurize "
            f"{self.featurize_seconds:.0f} s); best {self.best['trial']}: "
            f"{self.best['metric']} {self.best['best']:.4f} "
            f"(unfreeze {self.best['unfreeze']})"
        ]
        for row in self.compare:
            lines.append(
                f"  {row['row']:>10}: train {row['train_accuracy']:.3f} val "
                f"{row['val_accuracy']:.3f} test {row['test_accuracy']:.3f} "
                f"({row['seconds']:.0f} s)"
            )
        depths = depth_line(self.table, self.best["metric"], self.mode)
        if depths:
            lines.append(f"sweep: {depths}")
        lines.append(f"sweep: best model {self.best_model}, report {self.report}")
        return "\n".join(lines)


def sweep_outputs(
    cfg: SweepConfig, plan: SweepPlan, trials: Trials, test_splits: list[str]
) -> SweepResult:
    """Write ``results.csv``/``results.parquet``, export the best trial's network to
    ``best/model``, evaluate the compare rows on ``test_splits``, write the report."""
    path, table, chosen = plan.path, [], None
    # in trial-name order, so ties on the metric pick the same best trial on every run
    results = sorted(trials.results, key=lambda r: os.path.basename(r.path))
    for result in results:
        row = _row(cfg, result, trials.walls.get(os.path.basename(result.path), math.nan))
        row["unfreeze"] = row.get("unfreeze") or trial_depth(cfg, result.config).key
        row["checkpoint"] = best_checkpoint(result, cfg.metric, cfg.mode)
        table.append(row)
        better = chosen is None or (
            row["best"] > chosen["best"] if cfg.mode == "max" else row["best"] < chosen["best"]
        )
        if row["checkpoint"] and not math.isnan(row["best"]) and better:
            chosen = row
    _prune(results, table)
    errors = [r for r in results if r.error]
    if chosen is None:
        raise RuntimeError(
            f"no trial of {path} finished an epoch; first error: "
            f"{errors[0].error if errors else 'none reported'}"
        )
    frame = pd.DataFrame(table)
    frame.to_csv(f"{path}/results.csv", index=False)
    frame.to_parquet(f"{path}/results.parquet", index=False)
    net = load(chosen["checkpoint"])
    net.spec["classes"] = plan.items.classes
    best_model = f"{path}/best/model"
    net.save(best_model)
    compare = _compare_rows(table, plan, test_splits) if cfg.preset == "compare" else []
    page = report.write_sweep_report(
        path,
        table,
        chosen,
        best_model,
        compare,
        title=f"{os.path.basename(path)}: {cfg.metric}",
        depths=depth_line(table, cfg.metric, cfg.mode),
    )
    if errors:
        log.warning(
            "%d trial(s) failed; see results.csv and their logs under %s", len(errors), path
        )
    return SweepResult(path, table, chosen, best_model, page, compare, mode=cfg.mode)


def depth_line(table: list[dict], metric: str, mode: str) -> str:
    """Which unfreeze depth won and by how much: the best ``metric`` of each depth's trials
    (empty when the sweep tried one depth, or a compare preset's rows)."""
    best: dict[str, float] = {}
    for row in table:
        value = row.get("best", math.nan)
        if row.get("row") or value != value:
            continue
        key = str(row["unfreeze"])
        if key not in best or (value > best[key] if mode == "max" else value < best[key]):
            best[key] = value
    if len(best) < 2:
        return ""
    ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=mode == "max")
    (won, top), (second, runner) = ranked[:2]
    others = "; ".join(f"unfreeze {k}: {v:.4f}" for k, v in ranked[2:])
    tied = [k for k, v in ranked if v == top]
    if len(tied) > 1:  # no winner to name: a tie is said to be one
        rest = "; ".join(f"unfreeze {k}: {v:.4f}" for k, v in ranked[len(tied) :])
        return f"unfreeze {', '.join(tied)} tied: best {metric} {top:.4f}" + (
            f"; {rest}" if rest else ""
        )
    return (
        f"unfreeze {won} won: best {metric} {top:.4f} vs {runner:.4f} for unfreeze {second} "
        f"(by {abs(top - runner):.4f})" + (f"; {others}" if others else "")
    )


def _row(cfg: SweepConfig, result, wall: float) -> dict:
    """One trial's table row: its config, status, epochs, best and final metric, the wall
    time the driver saw and the time its epochs took (training and validation)."""
    config, frame = result.config, result.metrics_dataframe
    row = {
        "trial": os.path.basename(result.path),
        **{k: config[k] for k in sorted(config)},
        "status": "error" if result.error else "ok",
    }
    if frame is None or not len(frame) or cfg.metric not in frame:
        return {**row, "epochs_run": 0, "metric": cfg.metric, "best": math.nan, "final": math.nan}
    best = frame[cfg.metric].idxmax() if cfg.mode == "max" else frame[cfg.metric].idxmin()
    return {
        **row,
        "epochs_run": int(frame["epoch"].max()),
        "metric": cfg.metric,
        "best": float(frame.loc[best, cfg.metric]),
        "best_epoch": int(frame.loc[best, "epoch"]),
        "final": float(frame[cfg.metric].iloc[-1]),
        **{
            f"best_{k}": float(frame.loc[best, k])
            for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
            if k in frame
        },
        "seconds": (float(frame["time_total_s"].iloc[-1]) if "time_total_s" in frame else math.nan),
        "wall_s": wall,
        "train_s": float(frame["seconds"].sum()) if "seconds" in frame else math.nan,
    }


def _prune(results, table: list[dict]) -> None:
    """Delete the checkpoints of finished trials but their best and their last (a later resume
    of an errored sibling never needs them)."""
    for result, row in zip(results, table):
        if result.error or not result.best_checkpoints:
            continue
        keep = {row["checkpoint"], checkpoint_uri(result.checkpoint) if result.checkpoint else None}
        for checkpoint, _ in result.best_checkpoints:
            if checkpoint_uri(checkpoint) not in keep:
                with contextlib.suppress(FileNotFoundError):  # a resumed sweep's, gone already
                    checkpoint.filesystem.delete_dir(checkpoint.path)


def _compare_rows(table: list[dict], plan: SweepPlan, test_splits: list[str]) -> list[dict]:
    """The compare preset's three rows: train/val accuracy at the best epoch, test accuracy of
    the restored best checkpoint (when the data has a test split), wall time."""
    rows = []
    for name in COMPARE_ROWS:
        row = next((r for r in table if r.get("row") == name), None)
        if row is None or not row["checkpoint"]:
            continue
        test = math.nan
        for split in test_splits:
            source = plan.feature_sets.get(row["unfreeze"]) or plan.items
            test = evaluate(load(row["checkpoint"]), source, split=split).accuracy
        rows.append(
            {
                "row": name,
                "unfreeze": row["unfreeze"],
                "train_accuracy": row.get("best_train_accuracy", math.nan),
                "val_accuracy": row.get("best_val_accuracy", math.nan),
                "test_accuracy": test,
                "seconds": row.get("seconds", math.nan),
                "epochs": row["epochs_run"],
            }
        )
    return rows
