import json
import shutil
import subprocess
import sys

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.featureset import FeatureSet
from pipeline.data.parts import finalize, part_name, row_keys, scan, write_atomic
from pipeline.data.schema import (
    ID,
    LABEL,
    MANIFEST,
    META_SCHEMA,
    SOURCE,
    SPLIT,
    VIEW,
    FeatureSetError,
    feature_schema,
    to_table,
)

SHAPES = {"block.1": (4, 2, 2), "pool": (4,)}


def _rows(ids, split="train", views=None):
    n = len(ids)
    meta = {
        ID: ids,
        SOURCE: [f"/data/{i}.png" for i in ids],
        LABEL: np.arange(n) % 2,
        SPLIT: [split] * n,
        VIEW: views if views is not None else [0] * n,
    }
    rng = np.random.default_rng(len(ids))
    features = {k: rng.normal(size=(n, *s)).astype(np.float32) for k, s in SHAPES.items()}
    return to_table(meta, features, feature_schema(SHAPES, "float16"))


def _write(directory, table):
    fs, root = fsspec.core.url_to_fs(str(directory))
    fs.makedirs(root, exist_ok=True)
    write_atomic(fs, f"{root}/{part_name(row_keys(table))}", table)


def _finalize(directory, ids, views=1):
    return finalize(
        str(directory),
        {"classes": ["a", "b"], "frontier": SHAPES, "dtype": "float16"},
        {i: views for i in ids},
    )


def test_schema_uses_canonical_tensor_columns():
    schema = feature_schema(SHAPES, "float16")
    assert schema.names == [*META_SCHEMA.names, "block.1", "pool"]
    assert schema.field("block.1").type.extension_name == "arrow.fixed_shape_tensor"
    assert list(schema.field("block.1").type.shape) == [4, 2, 2]
    with pytest.raises(FeatureSetError, match="collide"):
        feature_schema({"label": (3,)}, "float32")


def test_files_read_with_plain_pyarrow_without_ray_or_unpickling(tmp_path):
    _write(tmp_path / "fs", _rows(["a", "b", "c"]))
    _finalize(tmp_path / "fs", ["a", "b", "c"])
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
    _write(tmp_path / "fs", _rows(["a", "b"]))
    with pytest.raises(FeatureSetError, match="no _manifest.json"):
        FeatureSet.open(str(tmp_path / "fs"))
    _finalize(tmp_path / "fs", ["a", "b"])
    opened = FeatureSet.open(str(tmp_path / "fs"))
    assert opened.manifest["rows"] == 2 and opened.shapes == SHAPES


def test_finalize_drops_duplicate_rows_and_refuses_missing_ones(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, _rows(["a", "b", "c"]))
    _write(directory, _rows(["c", "d"]))  # "c" again, as a retried batch with other boundaries
    with pytest.raises(FeatureSetError, match="1 expected rows are missing"):
        _finalize(directory, ["a", "b", "c", "d", "e"])
    assert not (directory / MANIFEST).exists()
    done = _finalize(directory, ["a", "b", "c", "d"])
    ids = done.table().column(ID).to_pylist()
    assert sorted(ids) == ["a", "b", "c", "d"]
    assert sum(f["rows"] for f in done.manifest["files"]) == 4


def test_scan_counts_finished_items_by_view_and_removes_temporaries(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, _rows(["a", "a", "b"], views=[0, 1, 0]))
    (directory / ".tmp-123-part-x.parquet").write_bytes(b"half a file")
    progress = scan(str(directory))
    assert not (directory / ".tmp-123-part-x.parquet").exists()
    assert progress.done_items({"a": 2, "b": 2}) == {"a"}
    assert progress.done_items({"a": 2, "b": 1}) == {"a", "b"}


def test_tensors_line_up_across_reads_and_split_filter(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, _rows(["b", "a"]))
    _write(directory, _rows(["c"], split="val"))
    done = _finalize(directory, ["a", "b", "c"])
    features, labels = done.tensors(split="train")
    assert features["pool"].shape == (2, 4) and labels.tolist() == [1, 0]  # sorted by id: a, b
    assert done.table(split="val").num_rows == 1
    assert done.errors().num_rows == 0
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["counts"] == {"train": {"0": 1, "1": 1}, "val": {"0": 1}}


def test_manifest_lists_files_so_stray_parts_are_ignored(tmp_path):
    directory = tmp_path / "fs"
    _write(directory, _rows(["a"]))
    done = _finalize(directory, ["a"])
    shutil.copy(next(directory.glob("part-*")), directory / "part-stray.parquet")
    assert FeatureSet.open(str(directory)).table().num_rows == 1
    assert pq.read_table(directory / "part-stray.parquet").num_rows == 1
    assert done.paths == [str(p) for p in directory.glob("part-*") if "stray" not in p.name]
