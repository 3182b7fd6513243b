import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.featureset import FeatureSet
from pipeline.data.parts import clear_unfinished, finalize, finished_units
from pipeline.data.schema import (
    ID,
    MANIFEST,
    META_SCHEMA,
    UNITS,
    FeatureSetError,
    feature_schema,
)
from pipeline.data.writers import PartWriter

SHAPES = {"block.1": (4, 2, 2), "pool": (4,)}


def unit_rows(ids, unit: str, split="train", views=None, errors=()) -> dict:
    """One whole unit's rows as the model stage hands them to the writer: its images (and
    ``errors``: ids that could not be read), every row saying how many rows the unit made."""
    n, views = len(ids), views if views is not None else [0] * len(ids)
    rng = np.random.default_rng(n)
    return {
        "id": np.array(ids, object),
        "source": np.array([f"/data/{i}.png" for i in ids], object),
        "label": (np.arange(n) % 2).astype(np.int32),
        "label_name": np.array([""] * n, object),
        "split": np.array([split] * n, object),
        "view": np.array(views, np.int16),
        "error": np.array(["broken" if i in errors else "" for i in ids], object),
        "unit": np.array([unit] * n, object),
        "unit_rows": np.full(n, n),
        "read_at": np.zeros(n),
        "read_bytes": np.zeros(n, np.int64),
        "model_done": np.ones(n),
        **{k: rng.normal(size=(n, *shape)).astype(np.float32) for k, shape in SHAPES.items()},
    }


def _write(directory, rows: dict, **limits) -> None:
    """Through the pass's own writer."""
    PartWriter([(str(directory), SHAPES)], dtype="float16", **limits)(rows)


def _finalize(directory, units):
    return finalize(
        str(directory), {"frontier": SHAPES, "dtype": "float16"}, list(units), ["a", "b"]
    )


def test_schema_uses_canonical_tensor_columns():
    schema = feature_schema(SHAPES, "float16")
    assert schema.names == [*META_SCHEMA.names, "block.1", "pool"]
    assert schema.field("block.1").type.extension_name == "arrow.fixed_shape_tensor"
    assert list(schema.field("block.1").type.shape) == [4, 2, 2]
    with pytest.raises(FeatureSetError, match="collide"):
        feature_schema({"label": (3,)}, "float32")


def test_files_read_with_plain_pyarrow_without_ray_or_unpickling(tmp_path):
    _write(tmp_path / "fs", unit_rows(["a", "b", "c"], "u" * 16))
    _finalize(tmp_path / "fs", ["u" * 16])
    script = f"""
import pickle, sys
def refuse(*a, **k):
    raise AssertionError("something tried to unpickle")
pickle.loads = pickle.load = refuse
import pyarrow.dataset as ds
table = ds.dataset({str(tmp_path / "fs")!r}, format="parquet").to_table()
assert table.num_rows == 3, table.num_rows
tensor = table.column("block.1").combine_chunks().to_numpy_ndarray()
assert tensor.shape == (3, 4, 2, 2) and str(tensor.dtype) == "float16", tensor.shape
frame = table.to_pandas()
assert frame["pool"][0].shape == (4,)
assert "ray" not in sys.modules and "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_directory_without_manifest_is_not_a_feature_set(tmp_path):
    _write(tmp_path / "fs", unit_rows(["a", "b"], "1" * 16))
    with pytest.raises(FeatureSetError, match="no _manifest.json"):
        FeatureSet.open(str(tmp_path / "fs"))
    _finalize(tmp_path / "fs", ["1" * 16])
    opened = FeatureSet.open(str(tmp_path / "fs"))
    assert opened.manifest["rows"] == 2 and opened.shapes == SHAPES


def test_a_row_twice_is_written_once_and_an_unfinished_unit_is_refused(tmp_path):
    directory = tmp_path / "fs"
    writer = PartWriter([(str(directory), SHAPES)], dtype="float16")
    first = unit_rows(["a", "b", "c"], "1" * 16)
    half = {k: v[:2] for k, v in first.items()}
    writer(half)
    writer(first)  # a retried decode task sends the unit's rows again: a and b come twice
    writer({k: v[:1] for k, v in unit_rows(["d", "e"], "2" * 16).items()})  # d alone: unfinished
    assert finished_units(str(directory)) == {"1" * 16}
    with pytest.raises(FeatureSetError, match="1 of 2 units are unfinished"):
        _finalize(directory, ["1" * 16, "2" * 16])
    assert not (directory / MANIFEST).exists()
    done = _finalize(directory, ["1" * 16])
    assert sorted(done.table().column(ID).to_pylist()) == ["a", "b", "c"]
    assert done.manifest["files"][0]["rows"] == 3


def test_a_rerun_removes_what_unfinished_units_left_and_keeps_finished_ones(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, unit_rows(["a", "b"], "1" * 16))
    _write(directory, unit_rows(["c", "d"], "2" * 16), part_rows=1)  # two parts, then killed:
    (directory / UNITS / ("2" * 16 + ".json")).unlink()  # ... before its marker
    (directory / ".tmp-123-part-x.parquet").write_bytes(b"half a file")
    (directory / "part-0123456789abcdef01234567.parquet").write_bytes(b"an older layout's")
    removed = clear_unfinished(str(directory), keep=finished_units(str(directory)))
    assert removed == 4  # unit 2's two parts, the temporary, the part of an older layout
    assert sorted(p.name for p in directory.glob("part-*")) == [f"part-{'1' * 16}-0000.parquet"]


def test_parts_are_sized_by_rows_and_bytes_not_by_batch(tmp_path):
    directory = tmp_path / "fs"
    writer = PartWriter([(str(directory), SHAPES)], dtype="float16", part_rows=4)
    rows = unit_rows([f"i{n}" for n in range(10)], "1" * 16, errors={"i3"})
    for start in range(0, 10, 2):  # five batches of two rows: three parts of at most four
        writer({k: v[start : start + 2] for k, v in rows.items()})
    done = _finalize(directory, ["1" * 16])
    assert [f["rows"] for f in done.manifest["files"]] == [4, 4, 1]
    assert done.manifest["errors"] == 1 and done.errors().column("reason")[0].as_py() == "broken"
    assert done.count("train") == 9 and done.rows_per_file("train", plain=True) == [4, 4, 1]


def test_tensors_line_up_across_reads_and_split_filter(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, unit_rows(["b", "a"], "1" * 16))
    _write(directory, unit_rows(["c"], "2" * 16, split="val"))
    done = _finalize(directory, ["1" * 16, "2" * 16])
    features, labels = done.tensors(split="train")
    assert features["pool"].shape == (2, 4) and labels.tolist() == [1, 0]  # sorted by id: a, b
    assert done.table(split="val").num_rows == 1
    assert done.errors().num_rows == 0
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["counts"] == {"train": {"0": 1, "1": 1}, "val": {"0": 1}}


def test_manifest_lists_files_so_stray_parts_are_ignored(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, unit_rows(["a"], "1" * 16))
    done = _finalize(directory, ["1" * 16])
    shutil.copy(next(directory.glob("part-*")), directory / "part-stray.parquet")
    assert FeatureSet.open(str(directory)).table().num_rows == 1
    assert pq.read_table(directory / "part-stray.parquet").num_rows == 1
    assert done.paths == [str(p) for p in directory.glob("part-*") if "stray" not in p.name]
