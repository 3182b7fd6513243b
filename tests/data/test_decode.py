"""Reading images: what is unreadable and why, orientation, seeded augmented views."""

import numpy as np
import pytest
from PIL import Image

from conftest import add_bad_files
from pipeline.data.decode import BadImage, augmented, read_image, resize_crop
from pipeline.data.shapes import generate_shapes
from pipeline.settings import AugmentConfig, Preprocess

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


def test_crops_are_torchvisions_resize_and_center_crop(tmp_path):
    from torchvision.transforms import v2

    reference = v2.Compose([v2.ToImage(), v2.Resize(36, antialias=True), v2.CenterCrop(32)])
    rng = np.random.default_rng(0)
    for size in ((40, 30), (100, 50), (30, 60), (36, 36)):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        got, want = resize_crop(image, TINY), reference(image).numpy()
        assert got.shape == want.shape == (3, 32, 32)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # rounding, at most


def test_augmented_views_are_seeded_and_leave_the_global_generators_alone():
    import torch

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8))
    cfg = AugmentConfig(scale=(0.3, 1.0))
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    views = [augmented(image, 32, cfg, seed) for seed in (5, 5, 6)]
    assert np.array_equal(views[0], views[1]) and not np.array_equal(views[0], views[2])
    assert views[0].shape == (3, 32, 32) and views[0].dtype == np.uint8
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_the_crop(tmp_path):
    x = np.linspace(0, 255, 1024)[None, :, None] * np.ones((768, 1, 3))
    Image.fromarray(x.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    full = read_image(str(tmp_path / "big.jpg"), 10**7)
    reduced = read_image(str(tmp_path / "big.jpg"), 10**7, min_side=100)
    assert full.size == (1024, 768) and reduced.size == (256, 192)  # 1/4: 1/8 would be < 100
    big = Preprocess(resize_size=100, crop_size=96, mean=(0, 0, 0), std=(1, 1, 1))
    difference = resize_crop(full, big).astype(int) - resize_crop(reduced, big).astype(int)
    assert np.abs(difference).mean() < 2
