"""The Ray Data pass's accounting: the steady rate is what the model stage sustained, and the
bytes read before the first part are what the decoders had read when it was written."""

from pipeline.engine.dataflow import STEADY_BATCHES, PassStats


def _written(images: int, model_done: float, parts=(), read=()) -> dict:
    """A writer's report (:class:`pipeline.data.writers.PartWriter`)."""
    return {"images": [[model_done, images, 0]], "parts": list(parts), "read": list(read)}


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


def test_bytes_before_the_first_part_are_each_units_last_count_by_then():
    stats = PassStats()
    stats.add(_written(5, 1.0, read=[["a", 1.0, 100], ["a", 3.0, 400], ["b", 1.5, 50]]))
    stats.add(_written(5, 2.0, parts=[2.5, 4.0], read=[["b", 2.0, 70], ["c", 3.5, 10]]))
    assert stats.first_part_at == 2.5
    assert stats.bytes_before_first_part() == 100 + 70  # a's 400 and c's came after
