"""The demo flow: on a generated (or given) dataset, with the packaged pretrained default,
featurize once, fit a head on Ray Train, sweep unfreeze depth and learning rate on Ray Tune, and
compare training from scratch with the frozen and fine-tuned pretrained network. Every step is
the library's own job flow (:func:`~pipeline.flows.run_train`, :func:`~pipeline.flows.run_sweep`);
the demo only wires them to one data set, one feature cache and one index page.

``run_demo`` needs a running Ray (``python -m jobs.demo`` starts one) and a few minutes.
Example: the demo's data, generated once per setting

    >>> from pipeline.config import DemoConfig
    >>> from pipeline.demo import generated_data
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

from pipeline import report
from pipeline.config import DemoConfig, TrainJobConfig, TuneJobConfig
from pipeline.flows import run_sweep, run_train
from pipeline.networks import base_network, cut_for
from pipeline.settings import DataConfig, FeaturizeConfig
from pipeline.shapes import generate_shapes
from pipeline.sources import list_items
from pipeline.sweep_results import SweepResult
from pipeline.train import FitResult

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


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the configured steps and write ``<out>/report.html`` linking their reports."""
    start = time.perf_counter()
    out = cfg.out.absolute()
    result = DemoResult(cfg.data or generated_data(cfg))
    data = DataConfig(sources=[str(result.data)], splits=cfg.splits)
    model = cfg.model.model_copy(update={"image_size": cfg.model.image_size or cfg.image_size})
    featurize = FeaturizeConfig(out=str(out / "features"))
    shared = dict(
        model=model, head=cfg.head, data=data, featurize=featurize, ray_address=cfg.ray_address
    )
    for step in cfg.steps:
        t0 = time.perf_counter()
        log.info("--- %s: %s", step, STEPS[step])
        if step == "fit":
            train = cfg.train.model_copy(update={"storage": str(out / "train")})
            result.fit = _fit(TrainJobConfig(cut=cfg.cut or [], train=train, **shared))
        else:
            sweep = TuneJobConfig(
                preset="sweep" if step == "sweep" else "compare",
                storage=str(out / "tune"),
                space=cfg.space,
                compare=cfg.compare,
                num_samples=cfg.num_samples,
                seed=cfg.seed,
                train=cfg.train.model_copy(update={"patience": None}),
                cpus_per_trial=cfg.cpus_per_trial,
                **shared,
            )
            setattr(result, step, run_sweep(sweep))
        result.steps[step] = round(time.perf_counter() - t0, 1)
    result.seconds = round(time.perf_counter() - start, 1)
    result.report = report.write_index(str(out), "ray-transfer demo", _sections(result))
    (out / "summary.json").write_text(json.dumps(_summary(result), indent=1))
    log.info(
        "demo: done in %.0f s (%s); report: %s",
        result.seconds,
        ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items()),
        result.report,
    )
    return result


def _fit(job: TrainJobConfig) -> FitResult:
    if not job.cut:  # default: everything below the head frozen, the sweep's "unfreeze 0" cut,
        # so the fit's feature set is the one the sweep and the comparison read
        base = base_network(job.network(), [], list_items(job.data).classes)
        job = job.model_copy(update={"cut": cut_for(base, 0, job.head)})
    return run_train(job)


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
