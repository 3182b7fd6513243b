"""The benchmarks run end to end on a tiny network and report consistent figures (no timing is
asserted: the figures are what a benchmark run prints)."""

import logging
import re

import pytest
import ray

from pipeline.benchmarks import featurize, fit, listing, scale, shards

pytestmark = pytest.mark.slow
PEER_LINE = r"peer: .+ \d+\.\d images/s; the pipeline is \d+\.\d\dx"


def test_featurize_benchmark_runs_the_job_beside_its_peers_and_the_limit(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.benchmarks"):
        figures = featurize.featurize_benchmark(
            None, "tiny:cnn", None, "pool", images=20, batch_size=8, workers=0, actors=1
        )
    assert figures["images"] == figures["pipeline_images"] == 20
    assert figures["pipeline_engine"] == "onnxruntime" and figures["pipeline_errors"] == 0
    assert figures["throughput_ratio"] == pytest.approx(
        figures["pipeline_images_per_s"] / figures["plain_images_per_s"]
    )
    assert figures["limit_fraction"] == pytest.approx(
        figures["pipeline_images_per_s"] / figures["prefix_onnxruntime_images_per_s"]
    )
    assert figures["prefix_torch_images_per_s"] > 0 and figures["gemm_peak_gflops"] > 0
    assert figures["pipeline_peak_rss_mb"] > 0 and figures["plain_peak_rss_mb"] > 0
    # every peer ran as a process of its own and wrote every image
    assert {k: figures[f"peer_{k}"]["images"] for k in featurize.PEERS} == dict.fromkeys(
        featurize.PEERS, 20
    )
    for name in featurize.PEERS:
        assert figures[f"ratio_{name}"] == pytest.approx(
            figures["pipeline_images_per_s"] / figures[f"peer_{name}"]["images_per_s"]
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-5].startswith("throughput: pipeline ") and lines[-5].endswith("x")
    assert lines[-4].startswith("limit: pipeline at ") and lines[-4].endswith(
        "% of the prefix-only onnxruntime rate"
    )
    peers = [line for line in lines[-3:] if re.fullmatch(PEER_LINE, line)]
    assert len(peers) == 3 and "Ray Data" in peers[-1]


def test_featurize_memory_benchmark_compares_two_sizes():
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


def test_listing_benchmark_lists_both_sizes_three_ways(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.benchmarks"):
        figures = listing.listing_benchmark(tmp_path, images=40, factor=3)
    assert set(figures) == {40, 120}
    for n, ways in figures.items():
        assert set(ways) == set(listing.WAYS)
        assert all(
            w["items"] == n and w["seconds"] > 0 and w["peak_mib"] > 0 for w in ways.values()
        )
    assert caplog.records[-1].getMessage().startswith("listing: pipeline, Ray tasks: 3x the files")


@pytest.mark.timeout(900)
def test_scale_benchmark_runs_both_sizes_on_three_nodes_with_streaming_workers(tmp_path, caplog):
    ray.shutdown()  # the benchmark starts its own cluster; the session's Ray restarts on demand
    with caplog.at_level(logging.INFO, logger="pipeline.benchmarks"):
        figures = scale.scale_benchmark(tmp_path, images=50, epochs=1, budget=2**18)
    assert [figures[k]["images"] for k in ("small", "large")] == [50, 500]
    for run in figures.values():
        assert run["driver_mib"] > 0 and run["worker_mib"] > 0 and run["images_per_s"] > 0
        assert run["streamed"]  # 256 KiB of budget: both sizes' shards streamed
    last = caplog.records[-1].getMessage()
    assert last.startswith("scale: peak RSS grows ") and last.endswith("x for 10x the images")


@pytest.mark.timeout(600)
def test_shards_benchmark_runs_two_fresh_jobs_and_reads_little_before_the_first_part(
    tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="pipeline.benchmarks"):
        figures = shards.shards_benchmark(tmp_path, images=1000, factor=3)
    small, large = figures["small"], figures["large"]
    assert (small["images"], small["shards"], large["images"], large["shards"]) == (
        1000,
        1,
        3000,
        3,
    )
    for run in (small, large):
        assert run["peak_mib"] > 0 and 0 < run["first_part_s"] <= run["seconds"]
        # the bytes come from the job's own log line; a part needs its shard read first
        assert 0 < run["bytes_before_first_part"] <= run["shards"] * run["shard_bytes"]
    last = caplog.records[-1].getMessage()
    assert re.fullmatch(
        r"shards: driver peak RSS grows \d+\.\d\dx, first part after \d+\.\d s vs \d+\.\d s,"
        r" for 3x the images",
        last,
    )
