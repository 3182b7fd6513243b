"""Curves, confusion matrix and the HTML report, written to disk and read back."""

from pipeline.runs.report import write_report
from pipeline.train.metrics import Evaluation


def test_report_writes_pngs_and_a_page_that_links_them(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_accuracy": 0.5 + e / 10,
            "val_accuracy": 0.4 + e / 10,
            "val_top2": 0.9,
        }
        for e in (1, 2, 3)
    ]
    evaluation = Evaluation(["ant", "bee"], 10, 0.3, 0.8, {2: 1.0}, [[4, 1], [1, 4]])
    page = write_report(str(tmp_path), history, evaluation, title="ants <vs> bees")
    for name in ("loss.png", "accuracy.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "report.html").read_text()
    assert page.endswith("report.html") and "ants &lt;vs&gt; bees" in html
    assert all(f'src="{name}"' in html for name in ("loss.png", "accuracy.png", "confusion.png"))
    assert "<td>bee</td>" in html and "val_top2" in html
