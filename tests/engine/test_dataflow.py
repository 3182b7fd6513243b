"""The Ray Data pass's accounting: the steady rate is what the model stage sustained."""

import numpy as np

from pipeline.engine.dataflow import STEADY_BATCHES, PassStats


def _written(images: int, model_done: float) -> dict:
    return {
        "images": np.array([images]),
        "errors": np.array([0]),
        "model_done": np.array([model_done]),
    }


def test_steady_rate_counts_only_what_the_model_finished_after_its_first_batch():
    stats = PassStats()
    # a first batch of 1000 images decoded while the actor started, then 100 a second
    stats.add(_written(1000, 10.0))
    for second in range(1, STEADY_BATCHES + 1):
        stats.add(_written(100, 10.0 + second))
    assert stats.images == 1000 + 100 * STEADY_BATCHES
    assert stats.steady() == 100.0  # not (images - first) over the pass's wall time


def test_too_short_a_pass_has_no_steady_rate_and_unstamped_rows_still_count():
    stats = PassStats()
    stats.add(_written(5, float("nan")))  # written without a model stage's stamp
    stats.add(_written(5, 1.0))
    assert stats.images == 10 and stats.steady() == 0.0
