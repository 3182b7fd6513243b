"""Training made visible: PNG curves, a confusion matrix and one HTML page tying them together.

Figures are drawn with matplotlib's object API (no pyplot, so no display or global state) and
written through fsspec, so a run directory on object storage gets its report too.

Example:

    >>> from pipeline.runs.report import write_report
    >>> history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "train_accuracy": 0.5,
    ...             "val_accuracy": 0.4}]
    >>> write_report(str(tmp / "run"), history, None, title="demo").endswith("run/report.html")
    True
"""

from __future__ import annotations

import html
import io
from typing import Protocol

import fsspec
from matplotlib.figure import Figure


class Scores(Protocol):
    """What a report shows of an evaluation (:class:`pipeline.train.metrics.Evaluation`)."""

    classes: list[str]
    confusion: list[list[int]]

    @property
    def per_class(self) -> dict[str, float]: ...

    def summary(self) -> str: ...


CURVES = {
    "loss.png": ("loss", ["train_loss", "val_loss"]),
    "accuracy.png": ("accuracy", ["train_accuracy", "val_accuracy"]),
}
CONFUSION = "confusion.png"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def curve(history: list[dict], keys: list[str], ylabel: str) -> bytes:
    """One line per metric in ``keys`` against the epoch."""
    figure = Figure(figsize=(5, 3.2))
    axes = figure.subplots()
    epochs = [h["epoch"] for h in history]
    for key in keys:
        if history and key in history[0]:
            axes.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("_", " "))
    axes.set_xlabel("epoch")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def confusion_plot(confusion: list[list[int]], classes: list[str]) -> bytes:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
    size = min(12, 2.5 + 0.45 * len(classes))
    figure = Figure(figsize=(size, size * 0.85))
    axes = figure.subplots()
    image = axes.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right")
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(classes) <= 30:
        high = max(max(row) for row in confusion) if confusion else 0
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                axes.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if count > high / 2 else "black",
                )
    return _png(figure)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _write_images(directory: str, images: dict[str, bytes]) -> None:
    fs, root = fsspec.core.url_to_fs(directory)
    fs.makedirs(root, exist_ok=True)
    for name, data in images.items():
        with fs.open(f"{root}/{name}", "wb") as f:
            f.write(data)


def _write_page(directory: str, title: str, sections: list[str]) -> str:
    fs, root = fsspec.core.url_to_fs(directory)
    page = (
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
        "text-align:right}img{max-width:48%;margin:4px}</style>" + "\n".join(sections)
    )
    with fs.open(f"{root}/report.html", "w") as f:
        f.write(page)
    return f"{directory.rstrip('/')}/report.html"


def write_report(
    run_dir: str,
    history: list[dict],
    evaluation: Scores | None,
    title: str = "training run",
    skipped: tuple[str, list[dict]] | None = None,
) -> str:
    """Write ``loss.png``, ``accuracy.png``, ``confusion.png`` and ``report.html`` under
    ``run_dir`` (local path or fsspec URI); returns the report's path. ``skipped``: the inputs
    left out of the data (a line saying where they are listed, and the first rows of that
    list: source and reason)."""
    images = {}
    for name, (label, keys) in CURVES.items():
        images[name] = curve(
            history,
            keys
            + [
                k
                for k in (history[0] if history else {})
                if k.startswith("val_top") and label == "accuracy"
            ],
            label,
        )
    if evaluation is not None:
        images[CONFUSION] = confusion_plot(evaluation.confusion, evaluation.classes)
    _write_images(run_dir, images)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if evaluation is not None:
        sections += [
            f"<h2>Evaluation</h2><p>{html.escape(evaluation.summary())}</p>",
            _table(
                [
                    {"class": c, "accuracy": a, "examples": sum(row)}
                    for (c, a), row in zip(evaluation.per_class.items(), evaluation.confusion)
                ]
            ),
        ]
    sections += ["<h2>Curves</h2>"] + [f'<img src="{n}" alt="{n}">' for n in images]
    sections += ["<h2>Epochs</h2>", _table(history)]
    if skipped:
        line, rows = skipped
        sections += ["<h2>Inputs skipped</h2>", f"<p>{html.escape(line)}</p>", _table(rows)]
    return _write_page(run_dir, title, sections)


def scatter(
    rows: list[dict], x: str, y: str, xlabel: str, ylabel: str, title: str, log: bool = False
) -> bytes:
    """One point per trial: ``y`` against ``x`` (trials without both are left out); integer
    ticks when every ``x`` is an integer (depths are)."""
    points = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) == r.get(y)]
    figure = Figure(figsize=(5, 3.4))
    axes = figure.subplots()
    axes.scatter([p[0] for p in points], [p[1] for p in points])
    if log:
        axes.set_xscale("log")
    elif points and all(float(p[0]).is_integer() for p in points):
        axes.set_xticks(sorted({int(p[0]) for p in points}))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


SWEEP_COLUMNS = (
    "trial",
    "row",
    "unfreeze",
    "lr",
    "weight_decay",
    "width",
    "depth",
    "dropout",
    "optimizer",
    "batch_size",
    "epochs",
    "epochs_run",
    "best",
    "best_epoch",
    "final",
    "best_train_accuracy",
    "best_val_loss",
    "seconds",
    "status",
)


def write_sweep_report(
    sweep_dir: str,
    table: list[dict],
    best: dict,
    best_model: str,
    compare: list[dict],
    title: str = "sweep",
    depths: str = "",
) -> str:
    """Write ``by_unfreeze.png``, ``by_lr.png`` and ``report.html`` (the comparison table when
    given, the best trial, which depth won, every trial) under ``sweep_dir``; returns the
    report's path."""
    depth = [dict(r, unfrozen=_unfrozen(r.get("unfreeze"))) for r in table]
    metric = best["metric"].replace("_", " ")
    ylabel = f"best {metric} of the trial"
    images = {
        "by_unfreeze.png": scatter(
            depth,
            "unfrozen",
            "best",
            "top blocks unfrozen (-1: all; a cut by node name: see the table)",
            ylabel,
            f"each trial's best {metric}, by unfreeze depth",
        )
    }
    if any(r.get("lr") is not None for r in table):
        images["by_lr.png"] = scatter(
            table,
            "lr",
            "best",
            "learning rate",
            ylabel,
            f"each trial's best {metric}, by learning rate",
            log=True,
        )
    _write_images(sweep_dir, images)
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if compare:
        sections += ["<h2>Scratch vs frozen vs fine-tuned</h2>", _table(compare)]
    sections += [
        f"<h2>Best trial</h2><p>{html.escape(best['trial'])}: {best['metric']} "
        f"{best['best']:.4f} at epoch {best.get('best_epoch')}, unfreeze "
        f"{html.escape(str(best['unfreeze']))}; network exported to "
        f"{html.escape(best_model)}</p>"
    ]
    if depths:
        sections += [f"<h2>Unfreeze depths</h2><p>{html.escape(depths)}</p>"]
    sections += ["<h2>Plots</h2>"] + [f'<img src="{n}" alt="{n}">' for n in images]
    sections += [
        "<h2>Trials</h2>",
        _table([{k: r.get(k) for k in SWEEP_COLUMNS if k in r} for r in table]),
    ]
    return _write_page(sweep_dir, title, sections)


def _unfrozen(unfreeze) -> float | None:
    """An unfreeze value as a number of top blocks (``all`` is -1), or None for a node name."""
    text = str(unfreeze).removeprefix("top:")
    return -1 if text == "all" else int(text) if text.isdigit() else None


def bars(rows: list[dict], keys: list[str], label: str = "row") -> bytes:
    """Grouped bars: one group per row (named by ``rows[i][label]``), one bar per key."""
    figure = Figure(figsize=(5, 3.2))
    ax = figure.add_subplot()
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar(
            [j + i * width for j in range(len(rows))], [r.get(key) for r in rows], width, label=key
        )
    ax.set_xticks(
        [j + width * (len(keys) - 1) / 2 for j in range(len(rows))], [str(r[label]) for r in rows]
    )
    ax.set_ylim(0, 1)
    ax.legend()
    return _png(figure)


def write_index(directory: str, title: str, sections: list[dict]) -> str:
    """Write ``report.html`` under ``directory`` linking other reports. Each section has a
    ``title`` and optionally ``text``, ``report`` and ``model`` (paths under ``directory``,
    linked relatively) and ``rows`` (the compare table, also drawn as ``compare.png``)."""
    root = directory.rstrip("/")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2>")
        if section.get("text"):
            parts.append(f"<p>{html.escape(section['text'])}</p>")
        if section.get("rows"):
            _write_images(
                directory,
                {
                    "compare.png": bars(
                        section["rows"], ["train_accuracy", "val_accuracy", "test_accuracy"]
                    )
                },
            )
            parts += [_table(section["rows"]), '<img src="compare.png" alt="compare.png">']
        for key in ("report", "model"):
            if section.get(key):
                link = section[key].removeprefix(root + "/")
                parts.append(f'<p>{key}: <a href="{html.escape(link)}">{html.escape(link)}</a></p>')
    return _write_page(directory, title, parts)
