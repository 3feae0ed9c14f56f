"""The training composites: deterministic per (seed, index), in range, never built from the
images of the real test pairs. Needs the ``train`` extra (scikit-image, OpenCV)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("cv2")

from training.composites import HELD_OUT_TEST_IMAGES, TRAIN_IMAGES, VAL_IMAGES, _image, make_batch, make_sample


def test_samples_are_deterministic_and_in_range() -> None:
    first = make_sample(3, 7, (64, 96))
    again = make_sample(3, 7, (64, 96))
    other = make_sample(3, 8, (64, 96))
    for key in ("src", "bgr", "pha", "fgr"):
        np.testing.assert_array_equal(first[key], again[key])
        assert first[key].dtype == np.float32 and first[key].min() >= 0 and first[key].max() <= 1
    assert first["src"].shape == (64, 96, 3) and first["pha"].shape == (64, 96)
    assert not np.array_equal(first["src"], other["src"])


def test_batch_layout_and_splits_differ() -> None:
    train = make_batch(0, 0, 2, (32, 48))
    val = make_batch(0, 0, 2, (32, 48), split="val")
    assert train["src"].shape == (2, 3, 32, 48) and train["pha"].shape == (2, 1, 32, 48)
    assert not np.array_equal(train["src"], val["src"])
    with pytest.raises(ValueError, match="split='test'"):
        make_sample(0, 0, (32, 32), split="test")


def test_held_out_test_images_are_refused() -> None:
    assert not set(HELD_OUT_TEST_IMAGES) & (set(TRAIN_IMAGES) | set(VAL_IMAGES))
    assert not set(TRAIN_IMAGES) & set(VAL_IMAGES)
    with pytest.raises(ValueError, match="held-out real test pairs"):
        _image("astronaut.png")
