"""Reading images: what is unreadable and why, orientation, seeded augmented views."""

import numpy as np
import pytest
from PIL import Image

from conftest import add_bad_files
from pipeline import sources
from pipeline.decode import BadImage, decode_batch, read_image
from pipeline.settings import AugmentConfig, DataConfig, Preprocess
from pipeline.shapes import generate_shapes

TINY = Preprocess(resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_read_image_names_what_is_wrong(tmp_path):
    generate_shapes(tmp_path, per_class=1, size=32)
    bad = add_bad_files(tmp_path)
    for name, reason in bad.items():
        with pytest.raises(BadImage, match=reason):
            read_image(str(tmp_path / "circle" / name), 64 * 64)


def test_read_image_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(str(tmp_path / "rotated.jpg"), 10**6).size == (20, 40)


def test_decode_batch_keeps_the_rest_of_a_block_and_makes_seeded_views(tmp_path):
    generate_shapes(tmp_path, per_class=1, size=32)
    (tmp_path / "circle" / "empty.png").write_bytes(b"")
    table = sources.list_items(DataConfig(sources=[str(tmp_path)], splits={"train": 1.0})).table
    batch = {k: np.array(table.column(k).to_pylist(), dtype=object) for k in table.column_names}
    kwargs = dict(preprocess=TINY, views=2, augment=AugmentConfig(), max_pixels=10**6)
    out = decode_batch(batch, **kwargs)
    assert len(out["id"]) == 5 * 3 + 1 and out["image"].shape == (16, 3, 32, 32)
    assert sorted(e for e in out["error"] if e) == ["empty file (0 bytes)"]
    assert out["image"].dtype == np.uint8
    again = decode_batch(batch, **kwargs)
    assert np.array_equal(out["image"], again["image"])  # augmented views are seeded
    plain = out["image"][(out["view"] == 0) & (out["error"] == "")]
    assert not np.array_equal(plain, out["image"][out["view"] == 1])
