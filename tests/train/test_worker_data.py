"""A worker's shard: every world-th row of a split, seeded epoch orders of equal length."""

import numpy as np
import torch

from conftest import write_tars
from pipeline.data.listing import plan_data
from pipeline.data.parts import finalize
from pipeline.data.shapes import generate_shapes
from pipeline.data.writers import PartWriter
from pipeline.net.builder import TransferLearning
from pipeline.settings import DataConfig, Preprocess
from pipeline.train.data import FeatureData, epoch_order, in_order
from pipeline.train.images import ImageData, StreamedImages, image_data
from pipeline.train.streaming import StreamedFeatures

SHAPES = {"pool": (3,)}
SHAPE_NAMES = ["circle", "cross", "square", "stripes", "triangle"]


def _feature_set(directory, n=20):
    """Rows 0..n-1 (features 3i, 3i+1, 3i+2; label i % 2) in two units of 7 and n - 7 rows,
    written by the pass's own writer: two part files."""
    writer = PartWriter([(str(directory), SHAPES)], dtype="float32")
    for unit, rows in (("1" * 16, range(7)), ("2" * 16, range(7, n))):
        rows = np.array(list(rows))
        k = len(rows)
        writer(
            {
                "id": np.array([f"{i:04d}" for i in rows], object),
                "source": np.array([f"/data/{i:04d}.png" for i in rows], object),
                "label": (rows % 2).astype(np.int32),
                "label_name": np.array([""] * k, object),
                "split": np.array(["train"] * k, object),
                "view": np.zeros(k, np.int16),
                "error": np.array([""] * k, object),
                "unit": np.array([unit] * k, object),
                "unit_rows": np.full(k, k),
                "read_at": np.zeros(k),
                "read_bytes": np.zeros(k, np.int64),
                "pool": (rows[:, None] * 3 + np.arange(3)).astype(np.float32),
            }
        )
    meta = {"frontier": SHAPES, "dtype": "float32"}
    return finalize(str(directory), meta, ["1" * 16, "2" * 16], ["a", "b"])


def test_epoch_order_is_seeded_and_gives_every_rank_the_same_number_of_steps():
    a = epoch_order(10, 13, 4, seed=1, epoch=2)
    assert [len(b) for b in a] == [4, 4, 4, 1]
    assert all(torch.equal(x, y) for x, y in zip(a, epoch_order(10, 13, 4, seed=1, epoch=2)))
    assert not torch.equal(a[0], epoch_order(10, 13, 4, seed=1, epoch=3)[0])
    assert sorted(torch.cat(a)[:10].tolist()) == list(range(10))  # a permutation, then padding
    assert [b.tolist() for b in in_order(5, 2)] == [[0, 1], [2, 3], [4]]


def test_feature_set_shards_partition_the_split(tmp_path):
    fs = _feature_set(tmp_path / "set")
    whole = FeatureData.read(fs, "train")
    parts = [FeatureData.read(fs, "train", shard=(rank, 3)) for rank in range(3)]
    assert sum(len(p) for p in parts) == len(whole) == 20
    torch.testing.assert_close(parts[1].features["pool"], whole.features["pool"][1::3])
    assert torch.equal(parts[2].labels, whole.labels[2::3])
    ((inputs, labels),) = whole.batches([torch.tensor([4, 0])], epoch=1, device="cpu")
    torch.testing.assert_close(inputs[0], torch.tensor([[12.0, 13, 14], [0, 1, 2]]))


def test_images_run_through_the_prefix_once_and_an_empty_split_gives_no_rows(tmp_path):
    generate_shapes(tmp_path / "d", per_class=2, size=32)
    items = plan_data(DataConfig(sources=[str(tmp_path / "d")], splits={"train": 1.0}))
    net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    preprocess = Preprocess(**net.spec["preprocess"])

    def once(split):
        images = ImageData(items, split, (0, 1), net, None, "cpu", preprocess=preprocess)
        return FeatureData.of_images(images, "cpu")

    train, val = once("train"), once("val")
    assert train.features["pool"].shape == (items.count("train"), 16, 1, 1) and len(train) > 0
    assert val.features["pool"].shape == (0, 16, 1, 1) and len(val) == 0


def _streamed_rows(streamed, epoch, sizes):
    order = [torch.zeros(n) for n in sizes]
    got = list(streamed.batches(order, epoch, "cpu"))
    assert [len(y) for _, y in got] == sizes
    return torch.cat([x[0] for x, _ in got])[:, 0], torch.cat([y for _, y in got])


def test_a_streamed_shard_is_the_same_every_run_and_every_row_once_an_epoch(tmp_path, ray_local):
    fs = _feature_set(tmp_path / "set")
    streamed = StreamedFeatures(fs, "train", (0, 1), plain=False, buffer_rows=8)
    assert len(streamed) == streamed.per_rank == 20
    first, labels = _streamed_rows(streamed, 3, [8, 8, 4])
    again, _ = _streamed_rows(streamed, 3, [8, 8, 4])
    assert torch.equal(first, again)  # an epoch's batches on a resume: the same
    assert sorted((first / 3).long().tolist()) == list(range(20))  # every row once
    assert torch.equal(labels, (first / 3).long() % 2)  # labels travel with their rows
    other, _ = _streamed_rows(streamed, 4, [8, 8, 4])
    assert not torch.equal(first, other)  # another epoch, another order
    in_file_order, _ = _streamed_rows(streamed, 0, [20])  # evaluation: unshuffled
    assert sorted(in_file_order.tolist()) == sorted(first.tolist())
    ranks = [StreamedFeatures(fs, "train", (r, 2), False, 8) for r in range(2)]
    assert sorted(len(r) for r in ranks) == [7, 13] and ranks[0].per_rank == 13
    short, _ = _streamed_rows(min(ranks, key=len), 1, [8, 5])  # wraps to the busiest's steps
    assert len(short) == 13
    # more ranks than files: each reads them all and keeps every third row
    thirds = [StreamedFeatures(fs, "train", (r, 3), False, 8) for r in range(3)]
    assert [len(t) for t in thirds] == [7, 7, 6] and {t.per_rank for t in thirds} == {7}
    rows = [_streamed_rows(t, 0, [len(t)])[0] for t in thirds]
    assert sorted(torch.cat(rows).tolist()) == sorted(first.tolist())


def _epoch(images, epoch):
    """One epoch of a StreamedImages: its features (the prefix's outputs) and labels."""
    got = list(images.batches([torch.zeros(4)] * (len(images) // 4), epoch, "cpu"))
    return torch.cat([x[0].flatten(1) for x, _ in got]), torch.cat([y for _, y in got])


def test_streamed_shards_give_every_member_once_an_epoch_in_a_seeded_order(tmp_path):
    generate_shapes(tmp_path / "d", per_class=4, size=32)
    write_tars(tmp_path / "d", tmp_path / "wds", per_shard=5)  # 4 shards, sorted by class
    plan = plan_data(
        DataConfig(
            sources=[{"uri": str(tmp_path / "wds"), "label_names": sorted(SHAPE_NAMES)}],
            splits={"train": 1.0},
        )
    )
    net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    images = image_data(plan, "train", (0, 1), net, augment=None, device="cpu", buffer_rows=6)
    assert isinstance(images, StreamedImages) and len(images) == 20
    once, labels = _epoch(images, 1)
    again, labels_again = _epoch(images, 1)
    assert torch.equal(once, again) and torch.equal(labels, labels_again)  # a resume's epoch
    assert sorted(labels.tolist()) == sorted([0, 1, 2, 3, 4] * 4)  # every member once
    other, _ = _epoch(images, 2)
    assert not torch.equal(once, other)  # another epoch, another order
    assert sorted(map(tuple, once.tolist())) == sorted(map(tuple, other.tolist()))
    plain, _ = _epoch(images, 0)  # evaluation: the shards in order, unshuffled
    assert sorted(map(tuple, plain.tolist())) == sorted(map(tuple, once.tolist()))
    ranks = [image_data(plan, "train", (r, 2), net, augment=None, device="cpu") for r in (0, 1)]
    assert sorted(len(r) for r in ranks) == [10, 10]  # two shards each
