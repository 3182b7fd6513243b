"""Shards planned as shards: the plan holds one unit per shard and reads no tar byte; members,
splits and unnamed classes are found by the pass that decodes them; parts are sized by rows."""

import json
import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from conftest import make_tiny_net, write_tars
from pipeline.data.featureset import FeatureSet
from pipeline.data.listing import plan_data
from pipeline.data.plan import Unit
from pipeline.data.shapes import generate_shapes
from pipeline.data.shards import TRUNCATED, Reader
from pipeline.features.run import featurize
from pipeline.settings import DataConfig, FeaturizeConfig

SHAPE_NAMES = ["circle", "cross", "square", "stripes", "triangle"]


class CountedFS(LocalFileSystem):
    """The local disk, remembering every file opened through it and the bytes read."""

    protocol = "counted"
    opened: list[str] = []
    read = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("counted://"))

    def _open(self, path, mode="rb", **kwargs):
        CountedFS.opened.append(path)
        f = super()._open(path, mode, **kwargs)
        inner = f.read

        def counted(*args):
            data = inner(*args)
            CountedFS.read += len(data)
            return data

        f.read = counted
        return f


fsspec.register_implementation("counted", CountedFS, clobber=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard-units")
    generate_shapes(root / "folder", per_class=6, size=32)
    return root


def test_planning_reads_no_tar_byte_and_one_parquet_footer(shapes, tmp_path):
    write_tars(shapes / "folder", tmp_path / "wds", per_shard=7)
    CountedFS.opened, CountedFS.read = [], 0
    plan = plan_data(DataConfig(sources=[f"counted://{tmp_path / 'wds'}"]))
    assert len(plan.units) == 5 and CountedFS.opened == [] and CountedFS.read == 0
    assert plan.counts is None and plan.classes is None  # only reading the shards tells
    # datasets-layout Parquet shards: the first shard's footer only (image column, names)
    files = sorted((shapes / "folder").rglob("*.png"))
    features = {"label": {"names": SHAPE_NAMES, "_type": "ClassLabel"}}
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    for n in range(3):
        rows = [  # with 100 kB of other data a row: a shard bigger than a footer read
            {"image": {"bytes": f.read_bytes()}, "label": 0, "pad": os.urandom(10**5)}
            for f in files[n::3]
        ]
        table = pa.Table.from_pylist(rows).replace_schema_metadata(meta)
        pq.write_table(table, tmp_path / f"train-{n:05d}.parquet")
    CountedFS.opened, CountedFS.read = [], 0
    plan = plan_data(DataConfig(sources=[f"counted://{tmp_path}/train-*.parquet"]))
    assert len(plan.units) == 3 and plan.classes == SHAPE_NAMES
    assert len(CountedFS.opened) == 1
    # pyarrow reads a footer's last 64 KiB at once; the shard is ten times that
    assert (tmp_path / "train-00000.parquet").stat().st_size > 10**6 > 10 * CountedFS.read


@pytest.mark.parametrize("label", ["name", "json", "index"])
def test_unnamed_labels_are_found_per_shard_and_merged_in_sorted_order(
    shapes, tmp_path, ray_local, label
):
    """Shards sorted by class, so no shard holds every class: each unit's names are relabelled
    to their index among every class found, in sorted order (numeric for bare indexes)."""
    write_tars(shapes / "folder", tmp_path / "wds", per_shard=8, label=label)
    plan = plan_data(DataConfig(sources=[str(tmp_path / "wds")], splits={"train": 1.0}))
    assert plan.classes is None
    cfg = FeaturizeConfig(out=str(tmp_path / "out"), batch_size=8, dtype="float32")
    done = featurize(make_tiny_net(), plan, cfg)
    fs = done.feature_sets[0]
    expected = ["0", "1", "2", "3", "4"] if label == "index" else sorted(SHAPE_NAMES)
    assert fs.classes == expected
    table = fs.table()
    names = [fs.classes[i] for i in table.column("label").to_pylist()]
    truth = [s.rsplit("#", 1)[1].split("_")[0] for s in table.column("source").to_pylist()]
    if label == "index":
        truth = [str(sorted(SHAPE_NAMES).index(t)) for t in truth]
    assert names == truth and table.num_rows == 30
    assert fs.manifest["counts"]["train"] == {str(i): 6 for i in range(5)}  # by class index


def test_parts_are_sized_by_rows_and_name_the_shard_they_cover(shapes, tmp_path, ray_local):
    tars = write_tars(shapes / "folder", tmp_path / "wds", per_shard=15)
    plan = plan_data(DataConfig(sources=[str(tmp_path / "wds")], splits={"train": 1.0}))
    cfg = FeaturizeConfig(out=str(tmp_path / "out"), batch_size=4, part_rows=6, dtype="float32")
    fs = featurize(make_tiny_net(), plan, cfg).feature_sets[0]
    parts = sorted(p for p in fsspec.filesystem("file").ls(fs.uri) if "/part-" in p)
    rows = {p: pq.read_metadata(p).num_rows for p in parts}
    assert len(tars) == 2 and len(parts) == 2 * 3 and max(rows.values()) <= 6
    assert sum(rows.values()) == 30 and FeatureSet.open(fs.uri).manifest["rows"] == 30
    by_unit = {p.rsplit("/", 1)[1].split("-")[1] for p in parts}
    assert by_unit == {u.digest for u in plan.units}


def test_a_parquet_shard_cut_short_is_recorded_like_a_tar(shapes, tmp_path):
    files = sorted((shapes / "folder").rglob("*.png"))[:10]
    table = pa.table({"image": [{"bytes": f.read_bytes()} for f in files], "label": [0] * 10})
    pq.write_table(table, tmp_path / "whole.parquet")
    whole = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    (member,) = Reader(Unit("cut.parquet", "parquet", str(tmp_path / "cut.parquet"))).members()
    assert member.source.endswith(f"#{TRUNCATED}") and "unreadable Parquet shard" in str(
        member.data
    )


def test_a_parquet_shard_with_bad_pages_keeps_the_rows_before_them(shapes, tmp_path):
    files = sorted((shapes / "folder").rglob("*.png"))[:10]
    table = pa.table({"image": [{"bytes": f.read_bytes()} for f in files], "label": [0] * 10})
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=5, compression="snappy")
    start = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 64] = b"\xff" * 64  # the second row group's first page header
    path.write_bytes(bytes(data))
    members = list(Reader(Unit("bad.parquet", "parquet", str(path))).members())
    assert [isinstance(m.data, bytes) for m in members] == [True] * 5 + [False]
    assert "unreadable Parquet shard" in str(members[-1].data)


def test_a_storage_error_inside_a_parquet_shard_fails_the_read(shapes, tmp_path, monkeypatch):
    files = sorted((shapes / "folder").rglob("*.png"))[:4]
    table = pa.table({"image": [{"bytes": f.read_bytes()} for f in files], "label": [0] * 4})
    pq.write_table(table, tmp_path / "ok.parquet")
    opened = CountedFS._open

    def hanging_up(self, path, mode="rb", **kwargs):
        f = opened(self, path, mode, **kwargs)
        f.read = lambda *args: (_ for _ in ()).throw(ConnectionResetError("the store hung up"))
        return f

    monkeypatch.setattr(CountedFS, "_open", hanging_up)
    unit = Unit("ok.parquet", "parquet", f"counted://{tmp_path}/ok.parquet")
    with pytest.raises(ConnectionResetError):  # the task fails and Ray retries it: no record
        list(Reader(unit).members())


def test_what_decides_splits_and_labels_on_reading_is_in_the_fingerprint(shapes, tmp_path):
    write_tars(shapes / "folder", tmp_path / "tars", per_shard=10, label="index", prefix="s")
    names = list(SHAPE_NAMES)

    def fingerprint(splits=None, **source):
        source = {"uri": str(tmp_path / "tars"), "label_names": names, **source}
        extra = {"splits": splits} if splits else {}
        return plan_data(DataConfig(sources=[source], **extra)).fingerprint

    base = fingerprint()
    assert fingerprint() == base  # the same data and settings: the same feature set
    changed = [
        fingerprint(splits={"train": 0.5, "val": 0.5}),
        fingerprint(split="val"),
        fingerprint(label_names=names[::-1]),  # an index now means another class
        fingerprint(label_column="json"),
    ]
    assert len({base, *changed}) == 5
