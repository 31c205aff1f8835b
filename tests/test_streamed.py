"""The streamed (ImageNet) input pipeline, offline: tfds.testing.mock_data and generated images."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bnjax.config import base_config
from bnjax.data import load_splits
from bnjax.data.batches import eval_batches, train_batches
from bnjax.data.streamed import (CROP_RATIO, CROP_SCALE, eval_transform,
                                 random_resized_crop_box, train_transform)
from bnjax.errors import DataError


def test_random_resized_crop_box_follows_the_recipe():
    fallbacks = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        height, width = rng.integers(50, 500, 2)
        top, left, crop_h, crop_w = random_resized_crop_box(rng, height, width)
        assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
        area, aspect = crop_h * crop_w / (height * width), crop_w / crop_h
        if (crop_h, crop_w) == (height, width):
            fallbacks += 1
            continue
        # rounding to whole pixels moves area and ratio a little
        assert CROP_SCALE[0] * 0.9 <= area <= CROP_SCALE[1] * 1.01
        assert CROP_RATIO[0] * 0.95 <= aspect <= CROP_RATIO[1] * 1.05
    assert fallbacks < 30
    # A panorama no crop can fit: the centred crop of the widest allowed aspect ratio.
    top, left, crop_h, crop_w = random_resized_crop_box(np.random.default_rng(0), 10, 1000)
    assert (crop_h, crop_w) == (10, round(10 * CROP_RATIO[1])) and left == (1000 - crop_w) // 2


def test_transforms_give_the_model_size_and_eval_takes_the_centre():
    image = np.zeros((300, 400, 3), np.uint8)
    image[140:160, 190:210] = 255  # a white square in the middle
    out = eval_transform(image, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out[112, 112].min() > 200 and out[0, 0].max() == 0  # resize 256, centre 224
    crop = train_transform(image, np.random.default_rng(0), 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, train_transform(image, np.random.default_rng(0), 64))


@pytest.fixture(autouse=True)
def _network_up_for_the_mock(monkeypatch):
    """mock_data stands in for tfds' download, which bnjax only tries with the network up."""
    from bnjax.data import tfds_source

    monkeypatch.setattr(tfds_source, "network_reachable", lambda timeout_s=3.0: True)


def _imagenet_config():
    data = base_config().data
    data.source, data.eval_split, data.decode_threads = "imagenet2012", "validation", 4
    return data


def test_streamed_imagenet_batches_are_deterministic_and_split_by_process():
    with tfds.testing.mock_data(num_examples=16):
        train, test = load_splits(_imagenet_config(), image_size=64, seed=3)
        assert len(train) == 16 and train.num_classes == 1000 and train.augmented_on_host
        batches = list(train_batches(train, 8, seed=3, start_step=0, end_step=2))
        again = list(train_batches(train, 8, seed=3, start_step=1, end_step=2))  # a resume
        halves = [list(train_batches(train, 8, seed=3, start_step=0, end_step=2, rows=rows))
                  for rows in (slice(0, 4), slice(4, 8))]  # two processes' rows
        evals = list(eval_batches(test, 8))
        eval_halves = [list(eval_batches(test, 8, rows)) for rows in (slice(0, 4), slice(4, 8))]
    assert batches[0][1].shape == (8, 64, 64, 3) and batches[0][1].dtype == np.uint8
    np.testing.assert_array_equal(again[0][1], batches[1][1])
    for step in range(2):
        np.testing.assert_array_equal(
            np.concatenate([halves[0][step][1], halves[1][step][1]]), batches[step][1])
        np.testing.assert_array_equal(
            np.concatenate([halves[0][step][2], halves[1][step][2]]), batches[step][2])
    assert not np.array_equal(batches[0][1], batches[1][1])
    assert len(evals) == 2 and evals[0][0].shape == (8, 64, 64, 3)
    for whole, first, second in zip(evals, *eval_halves):  # images, labels, weights
        for part in range(3):
            np.testing.assert_array_equal(np.concatenate([first[part], second[part]]), whole[part])


def test_streamed_training_runs_end_to_end(tmp_path):
    from bnjax.train import train_and_evaluate
    config = base_config()
    config.model.name = "cifar_resnet_8_4"  # 32x32 crops keep the test fast
    config.data = _imagenet_config()
    config.train.epochs, config.train.batch_size, config.train.lr_milestones = 1, 4, ()
    config.eval.batch_size, config.log.every_steps = 8, 1
    with tfds.testing.mock_data(num_examples=8):
        metrics = train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["steps"] == 2 and len(metrics["history"]) == 1
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["test_accuracy"] <= 1


def test_an_unprepared_imagenet_says_how_to_prepare_it(tmp_path):
    data = _imagenet_config()
    data.tfds_data_dir, data.tfds_download = str(tmp_path), False
    with pytest.raises(DataError, match="tfds build imagenet2012"):
        load_splits(data)
