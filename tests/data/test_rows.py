"""The decode stage: a unit's members as blocks of crops, with what the writer needs to know
when the unit is complete."""

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
    generate_shapes(tmp_path, per_class=4, size=32)  # 4 images a class folder, 4 rows a block
    plan = plan_data(DataConfig(sources=[str(tmp_path)], splits={"train": 1.0}))
    blocks = _blocks(plan, views=0)
    by_unit: dict[str, list] = {}
    for block in blocks:
        assert len(block["id"]) and len(set(block["unit"])) == 1
        by_unit.setdefault(block["unit"][0], []).append(block)
    assert len(by_unit) == len(plan.units) == 5
    for unit_blocks in by_unit.values():
        rows = sum(len(b["id"]) for b in unit_blocks)
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
