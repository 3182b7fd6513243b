"""Planning sources into units: folders, manifests and shards, without reading an image."""

import pytest

from conftest import plan_rows
from pipeline.data.listing import plan_data
from pipeline.data.plan import hash_split, item_id
from pipeline.data.shapes import SHAPES, generate_shapes
from pipeline.settings import DataConfig


def _table(items):
    return plan_rows(items)


def test_folder_source_lists_every_file_in_class_folders(tmp_path):
    generate_shapes(tmp_path, per_class=2, size=16)
    (tmp_path / "circle" / "notes.txt").write_text("not an image")  # kept: the decoder records it
    (tmp_path / "circle" / ".DS_Store").write_bytes(b"")  # hidden: skipped
    (tmp_path / "README").write_text("outside any class folder")  # skipped
    items = plan_data(DataConfig(sources=[str(tmp_path)], files_per_unit=2))
    rows = _table(items)
    assert items.classes == sorted(SHAPES) and len(rows["id"]) == 11
    # a unit per two files of a class folder; counts known without reading an image
    assert len(items.units) == 6 and sum(items.counts.values()) == 11
    assert {u.kind for u in items.units} == {"files"}
    assert any(s.endswith("notes.txt") for s in rows["source"])
    assert rows["id"] == [item_id(s) for s in rows["source"]]
    assert set(rows["split"]) <= {"train", "val"}


def test_manifest_sources_csv_and_parquet(tmp_path):
    generate_shapes(tmp_path / "img", per_class=1, size=16)
    csv = tmp_path / "img" / "list.csv"
    csv.write_text(
        "path,label,split\ncircle/circle_0000.png,10,test\n"
        f"{tmp_path}/img/cross/cross_0000.png,2,\n"
    )
    items = plan_data(DataConfig(sources=[str(csv)]))
    rows = _table(items)
    assert items.classes == ["2", "10"]  # integer labels keep numeric order
    assert rows["source"] == sorted(
        [f"{tmp_path}/img/circle/circle_0000.png", f"{tmp_path}/img/cross/cross_0000.png"]
    )
    assert rows["label"] == [1, 0] and rows["split"][0] == "test"

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"path": ["circle/circle_0000.png"], "label": ["circle"]}),
        tmp_path / "img" / "list.parquet",
    )
    items = plan_data(DataConfig(sources=[str(tmp_path / "img" / "list.parquet")]))
    assert items.classes == ["circle"] and len(_table(items)["id"]) == 1
    (tmp_path / "bad.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match="lacks a path column"):
        plan_data(DataConfig(sources=[str(tmp_path / "bad.csv")]))


def test_fsspec_memory_source(tmp_path, ray_local):
    # with Ray up: a memory filesystem is this process's own, so it is listed here, not on tasks
    import fsspec

    generate_shapes(tmp_path, per_class=1, size=16)
    fs = fsspec.filesystem("memory")
    for path in tmp_path.rglob("*.png"):
        fs.pipe(f"/shapes/{path.parent.name}/{path.name}", path.read_bytes())
    items = plan_data(DataConfig(sources=["memory://shapes"]))
    assert len(_table(items)["id"]) == 5
    uris = _table(items)["source"]
    assert all(s.startswith("memory://") and "/shapes/" in s for s in uris)
    with fsspec.open(uris[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_hash_split_is_deterministic_follows_ratios_and_survives_a_move(tmp_path):
    keys = [f"class/{i}.jpg" for i in range(2000)]
    splits = [hash_split(k, {"train": 0.7, "val": 0.2, "test": 0.1}) for k in keys]
    assert splits == [hash_split(k, {"train": 0.7, "val": 0.2, "test": 0.1}) for k in keys]
    assert abs(splits.count("train") / 2000 - 0.7) < 0.04
    assert abs(splits.count("test") / 2000 - 0.1) < 0.03
    generate_shapes(tmp_path / "a", per_class=6, size=16)
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    split_of = [_table(plan_data(DataConfig(sources=[str(tmp_path / d)])))["split"] for d in "ab"]
    assert split_of[0] == split_of[1]


def test_a_source_can_fix_the_split_and_bad_ratios_are_refused(tmp_path):
    generate_shapes(tmp_path / "train", per_class=1, size=16)
    generate_shapes(tmp_path / "val", per_class=1, size=16, seed=1)
    cfg = DataConfig(
        sources=[
            {"uri": str(tmp_path / "train"), "split": "train"},
            {"uri": str(tmp_path / "val"), "split": "val"},
        ]
    )
    assert sorted(_table(plan_data(cfg))["split"]) == ["train"] * 5 + ["val"] * 5
    with pytest.raises(ValueError, match="sum to 1"):
        DataConfig(sources=["x"], splits={"train": 0.5})


def test_data_fingerprint_changes_with_the_files(tmp_path):
    generate_shapes(tmp_path, per_class=1, size=16)
    cfg = DataConfig(sources=[str(tmp_path)])
    first = plan_data(cfg).fingerprint
    assert plan_data(cfg).fingerprint == first
    (tmp_path / "circle" / "circle_0000.png").write_bytes(b"changed")
    assert plan_data(cfg).fingerprint != first


def test_a_manifest_row_over_two_lines_or_short_of_fields_is_refused_naming_the_line(tmp_path):
    (tmp_path / "quoted.csv").write_text('path,label\na.png,cat\n"b\nc.png",dog\n')
    with pytest.raises(ValueError, match="line 3: .*no newline inside a quoted path"):
        plan_data(DataConfig(sources=[str(tmp_path / "quoted.csv")]))
    (tmp_path / "short.csv").write_text("path,label,split\na.png,cat\n")
    with pytest.raises(ValueError, match="line 2: 2 fields, the header has 3"):
        plan_data(DataConfig(sources=[str(tmp_path / "short.csv")]))


def test_a_manifests_split_comes_from_its_source_first_then_its_rows(tmp_path):
    classes = generate_shapes(tmp_path / "images", per_class=2, size=32)
    rows = [f"images/{c}/{c}_000{i}.png,{c},val" for c in classes for i in range(2)]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    by_rows = plan_data(DataConfig(sources=[str(tmp_path / "m.csv")]))
    assert by_rows.counts == {"val": 10} and set(plan_rows(by_rows)["split"]) == {"val"}
    fixed = plan_data(DataConfig(sources=[{"uri": str(tmp_path / "m.csv"), "split": "train"}]))
    assert fixed.counts == {"train": 10} and set(plan_rows(fixed)["split"]) == {"train"}
