"""Images kept as shards (the ``datasets`` Parquet layout, WebDataset tars) and unlabeled
folders: listed, featurized, trained on and predicted like the same images as a folder."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_tiny_net, plan_rows
from pipeline.data.listing import plan_data, source_format
from pipeline.data.plan import Unit
from pipeline.data.shapes import generate_shapes
from pipeline.data.shards import TRUNCATED, Reader
from pipeline.features.run import featurize
from pipeline.inference.batch import predict, read_predictions
from pipeline.settings import DataConfig, FeaturizeConfig, PredictConfig, SourceConfig, TrainConfig
from pipeline.train.evaluate import evaluate
from pipeline.train.fit import fit_featurized

PER_CLASS = 40  # 200 images: a few hundred, as a user's first shards


def make_stores(root: Path, per_class: int = PER_CLASS) -> tuple[list[str], dict[str, str]]:
    """The same generated images, a fifth of them for validation, as train/ and val/ folders per
    class, as ``datasets``-layout Parquet shards (two for train, small row groups, one for val)
    and as WebDataset tars (``<key>.png`` + ``<key>.cls``); returns the class names and each
    shard member's file name (the tests' join key)."""
    classes = sorted(generate_shapes(root / "all", per_class=per_class, size=32))
    files = sorted((root / "all").rglob("*.png"))
    splits = {"train": [f for i, f in enumerate(files) if i % 5], "val": files[::5]}
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    names = {}
    for split, chosen in splits.items():
        for f in chosen:
            (root / "folder" / split / f.parent.name).mkdir(parents=True, exist_ok=True)
            (root / "folder" / split / f.parent.name / f.name).write_bytes(f.read_bytes())
        half = (len(chosen) + 1) // 2 if split == "train" else len(chosen)
        for i, chunk in enumerate([chosen[:half], chosen[half:]]):
            if not chunk:
                continue
            rows = [{"image": {"bytes": f.read_bytes(), "path": f.name},
                     "label": classes.index(f.parent.name)} for f in chunk]  # fmt: skip
            parquet = root / "parquet" / f"{split}-{i:05d}.parquet"
            wds = root / "wds" / f"{split}-{i:05d}.tar"
            parquet.parent.mkdir(exist_ok=True)
            wds.parent.mkdir(exist_ok=True)
            table = pa.Table.from_pylist(rows).replace_schema_metadata(meta)
            pq.write_table(table, parquet, row_group_size=16)
            with tarfile.open(wds, "w") as tar:
                for row, f in enumerate(chunk):
                    tar.add(f, arcname=f"{f.stem}.png")
                    _add(tar, f"{f.stem}.cls", str(classes.index(f.parent.name)).encode())
                    names[f"{parquet}#{row}"] = names[f"{wds}#{f.stem}"] = f.name
    return classes, names


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return root, *make_stores(root)


def test_formats_are_inferred_and_the_datasets_layout_needs_no_options(stores):
    root, classes, _ = stores
    assert source_format(SourceConfig(uri=str(root / "folder"))) == "folder"
    assert source_format(SourceConfig(uri=str(root / "parquet"))) == "parquet"
    assert source_format(SourceConfig(uri=str(root / "wds" / "*.tar"))) == "webdataset"
    parquet = plan_data(DataConfig(sources=[str(root / "parquet")]))
    assert parquet.classes == classes and len(plan_rows(parquet)["id"]) == 5 * PER_CLASS
    wds = plan_data(DataConfig(sources=[{"uri": str(root / "wds"), "label_names": classes}]))
    assert wds.classes == classes and len(plan_rows(wds)["id"]) == 5 * PER_CLASS
    # a unit per shard, and nothing known per image until the shards are read
    assert [u.kind for u in wds.units] == ["webdataset"] * 3 and wds.counts is None
    unnamed = plan_data(DataConfig(sources=[str(root / "wds")]))
    assert unnamed.classes is None  # indexes without names: found while reading


def test_ids_do_not_depend_on_the_order_shards_are_listed_in(stores):
    root, _, _ = stores
    forward = plan_data(DataConfig(sources=[str(root / "parquet")]))
    shards = sorted((root / "parquet").glob("*.parquet"), reverse=True)
    backward = plan_data(DataConfig(sources=[str(s) for s in shards]))
    assert sorted(plan_rows(forward)["id"]) == sorted(plan_rows(backward)["id"])


def test_a_truncated_tar_keeps_what_it_could_read_and_records_the_rest(stores, tmp_path):
    root, _, _ = stores
    shard = root / "wds" / "train-00000.tar"
    whole = shard.read_bytes()
    with tarfile.open(shard) as tar:  # cut inside a member's bytes, halfway through the shard
        middle = tar.getmembers()[len(tar.getmembers()) // 2]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: middle.offset_data + 1])
    members = list(Reader(Unit("cut.tar", "webdataset", str(cut))).members())
    read = [m for m in members if not isinstance(m.data, Exception)]
    (tail,) = [m for m in members if isinstance(m.data, Exception)]
    assert 0 < len(read) < PER_CLASS * 2 and tail.source.endswith(f"#{TRUNCATED}")
    assert "truncated tar shard" in str(tail.data)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_shards_featurize_train_and_predict_like_the_same_folder(stores, tmp_path, ray_local):
    root, classes, names = stores
    sources = {
        kind: [
            {"uri": str(root / where), "split": split, "label_names": names_}
            for split, where in ((s, pattern.format(s)) for s in ("train", "val"))
        ]
        for kind, pattern, names_ in (
            ("folder", "folder/{}", None),
            ("parquet", "parquet/{}-*.parquet", None),
            ("webdataset", "wds/{}-*.tar", classes),
        )
    }
    # a bad image inside a shard is recorded like a bad file
    shard = root / "parquet" / "train-00000.parquet"
    bad = pa.table({"image": [{"bytes": b"not an image", "path": "x.png"}], "label": [0]})
    bad = bad.replace_schema_metadata(pq.read_schema(shard).metadata)  # its class names
    pq.write_table(bad, root / "parquet" / "train-00002.parquet")
    features, trained = {}, {}
    for name, source in sources.items():
        items = plan_data(DataConfig(sources=source))
        cfg = FeaturizeConfig(out=str(tmp_path / name), batch_size=64, dtype="float32")
        # frozen through the dropout: only the last layer trains, so no dropout mask depends on
        # the rows' order
        done = featurize(make_tiny_net("dropout"), items, cfg)
        fs = done.feature_sets[0]
        table = fs.table()
        features[name] = {
            names.get(s, s.rsplit("/", 1)[-1]): v
            for s, v in zip(table.column("source").to_pylist(), table.column("dropout").to_pylist())
        }
        assert len(features[name]) == 5 * PER_CLASS
        if name == "parquet":
            assert done.errors == 1 and fs.errors().column("source")[0].as_py().endswith("#0")
        # one step an epoch over every row: the rows' order (ids differ by store) cannot matter
        train = TrainConfig(
            epochs=5, batch_size=512, fine_tune={"lr": 0.05}, storage=str(tmp_path / name)
        )
        result = fit_featurized(make_tiny_net("dropout"), fs, train)
        trained[name] = result
    for name in ("parquet", "webdataset"):
        assert features[name].keys() == features["folder"].keys()
        assert all(
            np.array_equal(features[name][k], features["folder"][k]) for k in features["folder"]
        )
        # the same rows, summed in another order: the same model up to float rounding
        got, want = trained[name].evaluation, trained["folder"].evaluation
        assert got.n == want.n == PER_CLASS and abs(got.accuracy - want.accuracy) <= 1 / want.n
    net = trained["folder"].net
    predicted = {}
    for name, source in sources.items():
        items = plan_data(DataConfig(sources=source))
        out = predict(net, items, PredictConfig(out=str(tmp_path / f"predict-{name}")))
        table = read_predictions(out)
        keys = [names.get(s, s.rsplit("/", 1)[-1]) for s in table.column("source").to_pylist()]
        predicted[name] = dict(zip(keys, table.column("class").to_pylist()))
    assert predicted["parquet"] == predicted["folder"] == predicted["webdataset"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_unlabeled_folder_is_predicted_one_row_per_image_and_refused_for_training(
    tmp_path, ray_local
):
    generate_shapes(tmp_path / "labeled", per_class=4, size=32)
    (tmp_path / "plain").mkdir()
    for f in (tmp_path / "labeled").rglob("*.png"):
        f.rename(tmp_path / "plain" / f.name)
    items = plan_data(DataConfig(sources=[str(tmp_path / "plain")]))
    assert items.classes == [] and plan_rows(items)["label"] == [None] * 20
    net = make_tiny_net()
    net.spec["classes"] = ["circle", "cross", "square", "stripes", "triangle"]
    table = read_predictions(predict(net, items, PredictConfig(out=str(tmp_path / "out"))))
    assert table.num_rows == 20 and table.column("label").null_count == 20
    assert set(table.column("class").to_pylist()) <= set(net.spec["classes"])
    done = featurize(net, items, FeaturizeConfig(out=str(tmp_path / "features")))
    with pytest.raises(ValueError, match="unlabeled images in split 'train'"):
        fit_featurized(net, done.feature_sets[0], TrainConfig(storage=str(tmp_path / "t")))


def test_images_in_shards_evaluate_like_the_same_images_in_a_folder(stores):
    root, classes, _ = stores
    folder = plan_data(DataConfig(sources=[{"uri": str(root / "folder/val"), "split": "val"}]))
    shards = plan_data(DataConfig(sources=[str(root / "parquet/val-00000.parquet")]))
    assert folder.count("val") == PER_CLASS and shards.count("val") is None  # not yet read
    assert set(plan_rows(shards)["split"]) == {"val"}  # the split from the file name
    net = make_tiny_net()
    net.spec["classes"] = classes
    # evaluation on images decodes in the training worker's way (files read at random, shards
    # streamed), not Ray Data's
    on_folder, on_shards = (evaluate(net, items, split="val") for items in (folder, shards))
    assert on_shards.confusion == on_folder.confusion and on_shards.n == PER_CLASS
