"""A worker's shard: every world-th row of a split, seeded epoch orders of equal length."""

import fsspec
import numpy as np
import torch

from pipeline.data.parts import finalize, part_name, row_keys, write_atomic
from pipeline.data.schema import ID, LABEL, SOURCE, SPLIT, VIEW, feature_schema, to_table
from pipeline.data.shapes import generate_shapes
from pipeline.data.sources import list_items
from pipeline.net.builder import TransferLearning
from pipeline.settings import DataConfig, Preprocess
from pipeline.train.data import FeatureData, ImageData, epoch_order, in_order
from pipeline.train.streaming import StreamedFeatures

SHAPES = {"pool": (3,)}


def _feature_set(directory, n=20):
    ids = [f"{i:04d}" for i in range(n)]
    meta = {
        ID: ids,
        SOURCE: [f"/data/{i}.png" for i in ids],
        LABEL: np.arange(n) % 2,
        SPLIT: ["train"] * n,
        VIEW: [0] * n,
    }
    features = {"pool": np.arange(n * 3, dtype=np.float32).reshape(n, 3)}
    table = to_table(meta, features, feature_schema(SHAPES, "float32"))
    fs, root = fsspec.core.url_to_fs(str(directory))
    fs.makedirs(root, exist_ok=True)
    for part in (table.slice(0, 7), table.slice(7)):
        write_atomic(fs, f"{root}/{part_name(row_keys(part))}", part)
    return finalize(
        str(directory),
        {"classes": ["a", "b"], "frontier": SHAPES, "dtype": "float32"},
        {i: 1 for i in ids},
    )


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
    items = list_items(DataConfig(sources=[str(tmp_path / "d")], splits={"train": 1.0}))
    net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    preprocess = Preprocess(**net.spec["preprocess"])

    def once(split):
        images = ImageData(items.table, split, (0, 1), net, preprocess, None, 10**8, "cpu")
        return FeatureData.of_images(images, "cpu")

    train, val = once("train"), once("val")
    assert train.features["pool"].shape == (items.table.num_rows, 16, 1, 1) and len(train) > 0
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
