"""The benchmarks run end to end on a tiny network and report consistent figures (no timing is
asserted: the figures are what a benchmark run prints)."""

import pytest

from pipeline.benchmarks import featurize, fit

pytestmark = pytest.mark.slow


def test_featurize_benchmark_measures_the_pipeline_beside_the_plain_loop(ray_local):
    figures = featurize.featurize_benchmark(
        None, "tiny:cnn", None, "pool", images=20, batch_size=8, workers=0, actors=1
    )
    assert figures["images"] == 20
    assert figures["throughput_ratio"] == pytest.approx(
        figures["pipeline_images_per_s"] / figures["baseline_images_per_s"]
    )
    assert figures["prefix_gflop_per_image"] > 0 and figures["gemm_peak_gflops"] > 0
    # 20 rows of a tiny net are mostly Parquet metadata: only the ratio's presence is checked
    assert figures["float16_over_float32_bytes"] > 0 and figures["pipeline_peak_rss_mb"] > 0


def test_featurize_memory_benchmark_compares_two_sizes(ray_local):
    figures = featurize.featurize_memory_benchmark(
        "tiny:cnn", None, "pool", images=10, factor=2, size=32, batch_size=8
    )
    assert sorted(figures["peak_rss_mb"]) == [10, 20]
    assert figures["rss_ratio"] == pytest.approx(
        figures["peak_rss_mb"][20] / figures["peak_rss_mb"][10]
    )


def test_fit_benchmark_times_both_kinds_of_epoch(ray_local):
    figures = fit.fit_benchmark(
        None, "tiny:cnn", None, "pool", "fc2", images=20, batch_size=8, workers=0, epochs=2
    )
    assert figures["images"] == 20
    assert figures["speedup"] == pytest.approx(
        figures["end_to_end_epoch_s"] / figures["features_epoch_s"]
    )
    assert figures["plain_end_to_end_epoch_s"] > 0
