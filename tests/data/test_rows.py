"""The decode stage: a unit's members as blocks of crops, with what the writer needs to know
when the unit is complete."""

import tarfile

import numpy as np

from pipeline.data.listing import plan_data
from pipeline.data.rows import decode_units
from pipeline.data.shapes import generate_shapes
from pipeline.settings import AugmentConfig, DataConfig, Preprocess

TINY = Preprocess(resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _blocks(plan, **kwargs):
    kwargs = {"preprocess": TINY, "views": 2, "augment": AugmentConfig(), "block_rows": 4} | kwargs
    return list(decode_units({"unit": [u.to_json() for u in plan.units]}, plan=plan, **kwargs))


def test_a_unit_keeps_the_rest_of_its_block_and_makes_seeded_views(tmp_path):
    generate_shapes(tmp_path, per_class=1, size=32)
    (tmp_path / "circle" / "empty.png").write_bytes(b"")
    plan = plan_data(DataConfig(sources=[str(tmp_path)], splits={"train": 1.0}))
    blocks = _blocks(plan)
    out = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    assert len(out["id"]) == 5 * 3 + 1 and out["image"].shape == (16, 3, 32, 32)
    assert sorted(e for e in out["error"] if e) == ["empty file (0 bytes)"]
    assert out["image"].dtype == np.uint8
    again = np.concatenate([b["image"] for b in _blocks(plan)])
    assert np.array_equal(out["image"], again)  # augmented views are seeded
    plain = out["image"][(out["view"] == 0) & (out["error"] == "")]
    assert not np.array_equal(plain, out["image"][out["view"] == 1])


def test_a_units_last_block_says_how_many_rows_it_made_and_is_never_empty(tmp_path):
    generate_shapes(tmp_path, per_class=4, size=32)  # 4 images a class folder, 3 rows a block
    plan = plan_data(DataConfig(sources=[str(tmp_path)], splits={"train": 1.0}))
    blocks = _blocks(plan, views=0, block_rows=3)
    by_unit: dict[str, list] = {}
    for block in blocks:
        assert len(block["id"]) and len(set(block["unit"])) == 1
        by_unit.setdefault(block["unit"][0], []).append(block)
    assert len(by_unit) == len(plan.units) == 5
    for unit_blocks in by_unit.values():
        rows = sum(len(b["id"]) for b in unit_blocks)
        assert len(unit_blocks) == 2  # 3 rows, then the one held back
        assert all(b["unit_rows"].max() == -1 for b in unit_blocks[:-1])
        assert set(unit_blocks[-1]["unit_rows"]) == {rows} == {4}
        assert unit_blocks[-1]["read_bytes"][0] > 0  # the bytes the unit read, counted


def test_a_job_that_leaves_a_split_out_never_decodes_it(tmp_path):
    generate_shapes(tmp_path, per_class=6, size=32)
    plan = plan_data(DataConfig(sources=[str(tmp_path)], splits={"train": 0.5, "rest": 0.5}))
    used = plan.only(["train"])
    assert used.fingerprint != plan.fingerprint and used.count("rest") == 0
    splits = set(np.concatenate([b["split"] for b in _blocks(used, views=0)]))
    assert splits == {"train"}


def test_a_path_listed_twice_is_read_once_and_its_unit_still_completes(tmp_path):
    classes = generate_shapes(tmp_path / "images", per_class=1, size=32)
    lines = ["path,label"] + [f"images/{c}/{c}_0000.png,{c}" for c in classes]
    (tmp_path / "m.csv").write_text("\n".join(lines + lines[1:2]) + "\n")  # the first twice
    plan = plan_data(DataConfig(sources=[str(tmp_path / "m.csv")], splits={"train": 1.0}))
    (block,) = _blocks(plan, views=0, block_rows=100)
    assert len(block["id"]) == len(set(block["id"])) == 5
    assert set(block["unit_rows"]) == {5}  # what the writer waits for: what it gets


def test_a_unit_with_nothing_in_the_read_splits_sends_one_empty_row_not_an_error(tmp_path):
    generate_shapes(tmp_path / "images", per_class=2, size=32)
    sources = [{"uri": str(tmp_path / "images"), "split": "test"}]
    plan = plan_data(DataConfig(sources=sources)).only(["train", "val"])
    blocks = _blocks(plan, views=0)
    assert len(blocks) == len(plan.units) == 5
    for block in blocks:
        assert list(block["view"]) == [-1] and list(block["error"]) == [""]
        assert list(block["unit_rows"]) == [1]
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    (block,) = _blocks(plan_data(DataConfig(sources=[str(empty)], splits={"train": 1.0})))
    assert list(block["error"]) == ["no images in this unit"]  # an empty shard: recorded
