import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bnjax.data import load_splits
from bnjax.data.augment import IMAGENET_MEAN, IMAGENET_STD, normalize, random_crop_flip
from bnjax.data.batches import epoch_order, eval_batches, train_batches
from bnjax.data.dataset import Dataset
from bnjax.data.image_folder import load_image_folder
from bnjax.errors import DataError
from conftest import CLASSES, tar_folder, write_image_folder


def test_directory_and_archive_read_the_same(image_folder, tmp_path):
    archive = tar_folder(image_folder, str(tmp_path / "set.tar.gz"))
    from_dir = load_image_folder(image_folder, ("train", "test"), str(tmp_path / "c1"))
    from_tar = load_image_folder(archive, ("train", "test"), str(tmp_path / "c2"))
    for split, count in (("train", 8), ("test", 4)):
        assert from_dir[split].images.shape == (count * 3, 32, 32, 3)
        assert from_dir[split].images.dtype == np.uint8
        assert from_dir[split].class_names == CLASSES
        np.testing.assert_array_equal(from_dir[split].images, from_tar[split].images)
        np.testing.assert_array_equal(from_dir[split].labels, from_tar[split].labels)
    # the class colour survives decoding: label k has channel k brightest
    train = from_dir["train"]
    assert np.all(train.images.mean(axis=(1, 2)).argmax(-1) == train.labels)


def test_cache_is_used_and_a_damaged_cache_is_rebuilt(image_folder, tmp_path):
    cache = str(tmp_path / "cache")
    first = load_image_folder(image_folder, ("train", "test"), cache)
    (cached,) = os.listdir(cache)
    with open(os.path.join(cache, cached), "wb") as f:
        f.write(b"garbage")
    again = load_image_folder(image_folder, ("train", "test"), cache)
    np.testing.assert_array_equal(first["train"].images, again["train"].images)


@pytest.mark.parametrize("change", ["replace", "add"])
def test_a_changed_image_inside_the_folder_is_never_read_from_a_stale_cache(tmp_path, change):
    from PIL import Image

    root = write_image_folder(str(tmp_path / "d"), 2, 1)
    cache = str(tmp_path / "cache")
    before = load_image_folder(root, ("train", "test"), cache)["train"]
    target = os.path.join(root, "train", CLASSES[0],
                          "0000.png" if change == "replace" else "0099.png")
    white = np.full((32, 32, 3), 255, np.uint8)
    Image.fromarray(white).save(target + ".new.png")
    os.replace(target + ".new.png", target)  # in place: the class folder's own stat may not move
    after = load_image_folder(root, ("train", "test"), cache)["train"]
    assert len(os.listdir(cache)) == 2  # a second cache entry, for the new contents
    if change == "replace":
        assert not np.array_equal(before.images[0], white)
        np.testing.assert_array_equal(after.images[0], white)
    else:
        assert len(after) == len(before) + 1
        assert any(np.array_equal(image, white) for image in after.images)


def test_class_lists_must_match_between_splits(tmp_path):
    root = write_image_folder(str(tmp_path / "d"), 2, 1)
    os.makedirs(os.path.join(root, "test", "zebra"))
    from PIL import Image
    Image.new("RGB", (32, 32)).save(os.path.join(root, "test", "zebra", "0.png"))
    with pytest.raises(DataError, match="class folders differ"):
        load_image_folder(root, ("train", "test"), str(tmp_path / "c"))


def test_corrupt_image_names_the_file(tmp_path):
    root = write_image_folder(str(tmp_path / "d"), 2, 1)
    bad = os.path.join(root, "train", "dog", "0001.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(DataError, match="0001.png.*cannot decode"):
        load_image_folder(root, ("train", "test"), str(tmp_path / "c"))


def test_missing_tfds_dataset_says_how_to_go_offline(tmp_path):
    config = _data_config("cifar10")
    config.tfds_data_dir, config.tfds_download = str(tmp_path), False
    with pytest.raises(DataError, match="cifar10-jpeg.tar.gz"):
        load_splits(config)


def test_the_tfds_download_path_finds_every_module_it_imports():
    # tfds' download path (DatasetBuilder.code_path) imports importlib_resources lazily; without
    # it a fresh install stopped before trying the network. The whole offline download takes
    # minutes of retries, so this walks the step that failed.
    path = tfds.builder_cls("cifar10").code_path
    assert str(path).endswith("cifar.py")


def _data_config(source):
    from bnjax.config import base_config
    config = base_config().data
    config.source = source
    return config


def test_tfds_source_offline_with_mock_data(monkeypatch):
    from bnjax.data import tfds_source

    # mock_data stands in for the download, which bnjax only tries with the network up
    monkeypatch.setattr(tfds_source, "network_reachable", lambda timeout_s=3.0: True)
    with tfds.testing.mock_data(num_examples=12):
        train, test = load_splits(_data_config("cifar10"))
    assert train.images.shape == (12, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.num_classes == 10
    assert len(test) == 12


def test_random_crop_flip_shapes_ranges_and_determinism():
    images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (16, 32, 32, 3)), jnp.uint8)
    key = jax.random.key(0)
    out = random_crop_flip(key, images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, random_crop_flip(key, images))
    assert not np.array_equal(out, random_crop_flip(jax.random.key(1), images))
    # every output pixel is an input pixel or zero padding, and padding is at most 4 wide
    for original, augmented in zip(np.asarray(images), np.asarray(out)):
        rows_with_padding = np.all(augmented == 0, axis=(1, 2)).sum()
        assert rows_with_padding <= 4
        candidates = [original, original[:, ::-1]]
        assert any(np.isin(augmented[augmented > 0], c).all() for c in candidates)


def test_crop_offsets_cover_all_shifts_and_flip_half():
    ones = jnp.ones((512, 8, 8, 1), jnp.uint8)
    out = np.asarray(random_crop_flip(jax.random.key(0), ones))
    top_padding = (out[:, :, :, 0].sum(axis=2) == 0).argmin(axis=1)
    assert set(top_padding) == set(range(5))  # shifts of 0..4 padded rows at the top
    ramp = jnp.tile(jnp.arange(8, dtype=jnp.uint8)[None, None, :, None] + 1, (512, 8, 1, 1))
    flipped = np.asarray(random_crop_flip(jax.random.key(1), ramp, pad=0))
    fraction = np.mean(flipped[:, 0, 0, 0] == 8)
    assert 0.4 < fraction < 0.6


def test_normalize_matches_imagenet_statistics():
    images = jnp.asarray([[[[0, 128, 255]]]], jnp.uint8)
    out = np.asarray(normalize(images))[0, 0, 0]
    expected = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32


def test_batches_depend_on_seed_and_epoch_only():
    data = Dataset(np.arange(20)[:, None, None, None].astype(np.uint8), np.arange(20), ("a",))
    run = [labels for _, _, labels in train_batches(data, 4, seed=1, start_step=0, end_step=10)]
    resumed = [labels for _, _, labels in train_batches(data, 4, seed=1, start_step=7,
                                                        end_step=10)]
    for a, b in zip(run[7:], resumed):
        np.testing.assert_array_equal(a, b)
    first_epoch = np.concatenate(run[:5])
    assert sorted(first_epoch) == list(range(20))
    assert not np.array_equal(epoch_order(1, 0, 20), epoch_order(1, 1, 20))
    assert not np.array_equal(epoch_order(1, 0, 20), epoch_order(2, 0, 20))


def test_eval_batches_pad_with_zero_weight():
    data = Dataset(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10), ("a",))
    batches = list(eval_batches(data, 4))
    assert [len(w) for _, _, w in batches] == [4, 4, 4]
    assert sum(float(w.sum()) for _, _, w in batches) == 10
    # Two processes' rows of the padded last batch: the real examples, then the padding.
    first, second = (list(eval_batches(data, 4, rows))[-1] for rows in (slice(0, 2), slice(2, 4)))
    assert list(first[1]) == [8, 9] and list(first[2]) == [1, 1]
    assert list(second[1]) == [0, 0] and list(second[2]) == [0, 0]


def test_calls_group_steps_up_to_boundaries():
    from bnjax.data.batches import group_into_calls

    def steps_of(first, end, per_call, ends_call):
        batches = [(step, np.full((2, 1), step), np.array([step, step]))
                   for step in range(first, end)]
        return list(group_into_calls(iter(batches), per_call, ends_call))

    # Calls close at multiples of 4 and at the boundary after step 5; groups cut short run as
    # single steps, and so do the steps left when the source ends mid-group.
    calls = steps_of(0, 14, 4, lambda done: done == 6)
    assert [steps for steps, _, _ in calls] == [[0, 1, 2, 3], [4], [5], [6], [7],
                                                [8, 9, 10, 11], [12], [13]]
    # Starting mid-way (a resumed run) keeps the same grid.
    calls = steps_of(3, 12, 2, lambda done: done == 9)
    assert [steps for steps, _, _ in calls] == [[3], [4, 5], [6, 7], [8], [9], [10, 11]]
    steps, images, labels = calls[1]
    assert images.shape == (2, 2, 1) and images[1, 0, 0] == 5
    assert labels.tolist() == [[4, 4], [5, 5]]
    assert [s for s, _, _ in steps_of(0, 5, 1, lambda done: False)] == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("items", [2, 1000])
def test_prefetch_thread_ends_when_its_consumer_stops_early(items):
    """Whether the source is exhausted (the thread waits to hand over its end marker) or not."""
    import threading
    import time

    from bnjax.data.batches import prefetch

    before = {t for t in threading.enumerate() if t.name == "bnjax-prefetch"}
    batches = prefetch(iter(range(items)), depth=1)
    assert next(batches) == 0
    time.sleep(0.3)  # let the producer fill the queue and block on its next hand-over
    batches.close()
    deadline = time.time() + 5
    while time.time() < deadline and any(t.name == "bnjax-prefetch" and t not in before
                                         for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "bnjax-prefetch" and t not in before]


def test_the_eval_split_alone_is_the_eval_split_of_both_and_reads_no_training_image(tmp_path):
    from bnjax.config import base_config
    from bnjax.data import load_eval_split

    data = base_config().data
    data.source = write_image_folder(str(tmp_path / "images"))
    data.cache_dir = str(tmp_path / "cache")
    _, both = load_splits(data, 32)
    with open(os.path.join(data.source, "train", CLASSES[0], "0000.png"), "wb") as f:
        f.write(b"not an image")  # decoding the training split would now fail
    data.cache_dir = str(tmp_path / "fresh_cache")
    alone = load_eval_split(data, 32)
    np.testing.assert_array_equal(alone.images, both.images)
    np.testing.assert_array_equal(alone.labels, both.labels)
    assert alone.class_names == both.class_names


def test_an_unprepared_tfds_dataset_without_network_fails_at_once(tmp_path, monkeypatch):
    import time

    from bnjax.data import tfds_source

    monkeypatch.setattr(tfds_source, "network_reachable", lambda timeout_s=3.0: False)
    config = _data_config("cifar10")
    config.tfds_data_dir = str(tmp_path)  # download left on: tfds would retry for minutes
    started = time.time()
    with pytest.raises(DataError, match="not prepared 'cifar10'.*network is unreachable.*"
                                        "point data.source at an image folder"):
        load_splits(config)
    assert time.time() - started < 30
    assert "downloads" not in os.listdir(tmp_path)
