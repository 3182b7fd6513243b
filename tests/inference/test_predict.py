"""Batch inference on real Ray Data, Parquet on disk, and DL4J's output_from_featurized."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import TINY, network_input, standardized, start_ray
from pipeline.data.listing import plan_data
from pipeline.data.schema import CLASS, ERRORS, ID, MANIFEST, PREDICTED, PROBABILITIES, SOURCE
from pipeline.data.shapes import SHAPES, generate_shapes
from pipeline.engine.dataflow import prepare_engine
from pipeline.inference.batch import Predictor, output_from_featurized, predict, read_predictions
from pipeline.net.builder import TransferLearning
from pipeline.net.saving import load
from pipeline.settings import DataConfig, PredictConfig


def _net(seed=5):
    torch.manual_seed(seed)
    net = (
        TransferLearning("tiny:cnn", seed=seed)
        .set_feature_extractor("pool")
        .n_out_replace("fc2", 5)
        .build()
    )
    net.spec["classes"] = sorted(SHAPES)[:5]
    return net


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    generate_shapes(root / "data", per_class=4, size=32)
    (root / "data" / "circle" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root, plan_data(DataConfig(sources=[str(root / "data")]))


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_predictor_is_the_whole_network_on_uint8_images(tmp_path, engine):
    net = _net()
    spec = prepare_engine(net, [], TINY, PredictConfig(out=str(tmp_path), engine=engine), "net")
    assert spec.kind == engine
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    batch = {
        "id": np.array(["a", "b", "c"], object),
        "error": np.array(["", "", "bad"], object),
        "image": x.numpy(),
    }
    out = Predictor(spec, net.spec["classes"])(batch)
    net.eval()
    expected = torch.softmax(net(standardized(x[:2], TINY)), 1)
    np.testing.assert_allclose(out[PROBABILITIES][:2], expected.detach().numpy(), atol=1e-5)
    assert out[PREDICTED].tolist()[2] == -1 and out[CLASS][2] == ""


@pytest.fixture(scope="module")
def predicted(images, tmp_path_factory, _ray_session):
    start_ray()
    out = str(tmp_path_factory.mktemp("predictions") / "out")
    assert predict(_net(), images[1], PredictConfig(out=out, batch_size=8)) == out
    return out


def test_predict_writes_parquet_rows_and_records_bad_images(images, predicted):
    _, items = images
    net = _net().eval()
    table = read_predictions(predicted)
    errors = pq.read_table(f"{predicted}/{ERRORS}")
    assert errors.column("source").to_pylist()[0].endswith("bad.jpg")
    assert table.num_rows + errors.num_rows == sum(items.counts.values())
    assert {ID, SOURCE, PREDICTED, CLASS, PROBABILITIES} <= set(table.column_names)
    probabilities = table.column(PROBABILITIES).combine_chunks().to_numpy_ndarray()
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    x = torch.stack([network_input([s], TINY)[0] for s in table.column(SOURCE).to_pylist()])
    expected = net(x).argmax(1)
    assert table.column(PREDICTED).to_pylist() == expected.tolist()
    assert table.column(CLASS).to_pylist() == [net.spec["classes"][i] for i in expected]


def test_complete_predictions_are_not_recomputed_nor_overwritten_by_another_net(
    images, predicted, ray_local
):
    before = sorted(p.stat().st_mtime_ns for p in Path(predicted).iterdir())
    predict(_net(), images[1], PredictConfig(out=predicted, batch_size=8))
    assert before == sorted(p.stat().st_mtime_ns for p in Path(predicted).iterdir())
    with pytest.raises(FileExistsError, match="another network"):
        predict(_net(seed=6), images[1], PredictConfig(out=predicted))


def test_interrupted_predictions_are_completed_without_duplicates(
    images, predicted, tmp_path, ray_local
):
    out = tmp_path / "copy"
    shutil.copytree(predicted, out)
    (out / MANIFEST).unlink()
    marker = sorted((out / "_units").glob("*.json"))[0]
    marker.unlink()  # as if the run died before this unit was finished ...
    next(out.glob(f"part-{marker.stem}-*.parquet")).unlink()  # ... one of its parts unwritten
    predict(_net(), images[1], PredictConfig(out=str(out), batch_size=8))
    ids = read_predictions(str(out)).column(ID).to_pylist()
    assert len(ids) == len(set(ids)) == sum(images[1].counts.values()) - 1  # bad.jpg: an error


def test_exported_network_loads_with_one_call_and_predicts_the_same(tmp_path):
    net = _net()
    net.save(str(tmp_path / "model"))
    again = load(str(tmp_path / "model"))
    assert again.spec["classes"] == net.spec["classes"]
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    again.eval()
    assert torch.equal(net(x), again(x))


def test_output_from_featurized_equals_the_network_on_images():
    net = _net().eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(output_from_featurized(net, net.featurize(x)), net(x))
