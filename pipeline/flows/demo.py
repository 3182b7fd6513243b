"""The demo flow: on a generated (or given) dataset, with the packaged pretrained default,
featurize once, fit a head on Ray Train, sweep unfreeze depth and learning rate on Ray Tune, and
compare training from scratch with the frozen and fine-tuned pretrained network. Every step is the
library's own job flow (:func:`~pipeline.flows.run.run_train`,
:func:`~pipeline.flows.run.run_sweep`); the demo only wires them to one data set, one feature cache
and one index page.

``run_demo`` needs a running Ray (``python -m jobs.demo`` starts one) and a few minutes.
Example: the demo's data, generated once per setting

    >>> from pipeline.flows.demo import generated_data
    >>> from pipeline.settings import DemoConfig
    >>> root = generated_data(DemoConfig(out=tmp, images_per_class=2, image_size=32))
    >>> sorted(p.name for p in root.iterdir() if p.is_dir())
    ['circle', 'cross', 'square', 'stripes', 'triangle']
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.shapes import generate_shapes
from pipeline.flows.run import run_sweep, run_train
from pipeline.net.graph import TransferNet
from pipeline.net.heads import zoo_network
from pipeline.runs.report import write_index
from pipeline.settings import DataConfig, DemoConfig, FeaturizeConfig, TrainJobConfig, TuneJobConfig
from pipeline.train.fit import FitResult
from pipeline.tune.results import SweepResult

log = logging.getLogger(__name__)

STEPS = {
    "fit": "featurize once (Ray Data), fit the head on the features (Ray Train)",
    "sweep": "unfreeze depth x learning rate on the cached features (Ray Tune)",
    "compare": "from scratch vs frozen pretrained vs top blocks fine-tuned (Ray Tune)",
}


@dataclass
class DemoResult:
    """What the demo left: each step's result and the index page."""

    data: Path
    fit: FitResult | None = None
    sweep: SweepResult | None = None
    compare: SweepResult | None = None
    report: str = ""
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)


def generated_data(cfg: DemoConfig) -> Path:
    """The generated dataset under ``<out>/data``, written once per set of generator settings
    (a re-run keeps the files, their mtimes and so every cache keyed on them)."""
    root = cfg.out / "data"
    settings = {
        "per_class": cfg.images_per_class,
        "size": cfg.image_size,
        "seed": cfg.seed,
        "clutter": cfg.clutter,
    }
    stamp = root / ".generated.json"
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return root
    shutil.rmtree(root, ignore_errors=True)
    generate_shapes(root, **settings)
    stamp.write_text(json.dumps(settings))
    return root


def run_demo(cfg: DemoConfig, base: TransferNet | None = None) -> DemoResult:
    """Run the configured steps and write ``<out>/report.html`` linking their reports.
    ``base``: the network the job's checks built (``cfg.network()``, weights loaded)."""
    start = time.perf_counter()
    out = cfg.out.absolute()
    result = DemoResult(cfg.data or generated_data(cfg))
    model = cfg.network()
    base = base if base is not None else zoo_network(model)
    data = DataConfig(sources=[str(result.data)], splits=cfg.splits)
    featurize = FeaturizeConfig(out=str(out / "features"))
    shared = dict(data=data, featurize=featurize, ray_address=cfg.ray_address)
    for step in cfg.steps:
        t0 = time.perf_counter()
        log.info("--- %s: %s", step, STEPS[step])
        if step == "fit":
            # the default cut (everything below the head) is the sweep's "unfreeze 0": the fit's
            # feature set is the one the sweep and the comparison read
            train = cfg.train.model_copy(update={"storage": str(out / "train")})
            result.fit = run_train(TrainJobConfig(model=model, train=train, **shared), base)
        else:
            sweep = cfg.sweep.model_copy(
                update={
                    "preset": "sweep" if step == "sweep" else "compare",
                    "storage": str(out / "tune"),
                }
            )
            job = TuneJobConfig(
                model=model.model_copy(update={"cut": None, "hidden": [], "start_from": None}),
                train=cfg.train.model_copy(update={"patience": None}),
                sweep=sweep,
                **shared,
            )
            setattr(result, step, run_sweep(job, base))
        result.steps[step] = round(time.perf_counter() - t0, 1)
    result.seconds = round(time.perf_counter() - start, 1)
    result.report = write_index(str(out), "ray-transfer demo", _sections(result))
    (out / "summary.json").write_text(json.dumps(_summary(result), indent=1))
    log.info(
        "demo: done in %.0f s (%s); report: %s",
        result.seconds,
        ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items()),
        result.report,
    )
    return result


def _summary(result: DemoResult) -> dict:
    """The figures of each step, for scripts: ``<out>/summary.json``."""
    out: dict = {"data": str(result.data), "seconds": result.steps}
    if result.fit is not None:
        out["fit"] = {
            "val_accuracy": result.fit.evaluation.accuracy,
            "model": result.fit.model,
            "report": result.fit.report,
        }
    if result.sweep is not None:
        out["sweep"] = {
            "unfreeze": [r["unfreeze"] for r in result.sweep.table],
            "best": result.sweep.best["best"],
            "report": result.sweep.report,
            "model": result.sweep.best_model,
        }
    if result.compare is not None:
        out["compare"] = {r["row"]: r for r in result.compare.compare}
        out["compare"]["report"] = result.compare.report
    return out


def _sections(result: DemoResult) -> list[dict]:
    sections = []
    if result.fit is not None:
        fit = result.fit
        sections.append(
            {
                "title": "Head fitted on frozen features (Ray Train)",
                "report": fit.report,
                "model": fit.model,
                "text": fit.evaluation.summary() if fit.evaluation else "",
            }
        )
    for step in ("sweep", "compare"):
        sweep = getattr(result, step)
        if sweep is not None:
            best = sweep.best
            sections.append(
                {
                    "title": STEPS[step],
                    "report": sweep.report,
                    "model": sweep.best_model,
                    "rows": sweep.compare,
                    "text": f"{len(sweep.table)} trials; best {best['trial']} "
                    f"(unfreeze {best['unfreeze']}): {best['metric']} "
                    f"{best['best']:.3f}",
                }
            )
    sections.append(
        {
            "title": "Run",
            "text": f"data {result.data}; seconds per step {result.steps}, {result.seconds} in all",
        }
    )
    return sections
