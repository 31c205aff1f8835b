"""A researcher's own photos: a folder of any image sizes and colour modes trains, exports and
evaluates, for CIFAR-size networks (fitted once, in memory) and ImageNet ResNets (streamed)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from bnjax.data import load_splits
from bnjax.data.image_folder import decode, fit, load_image_folder
from conftest import resume_and_export

CLASSES = ("bright", "dark")
SIZES = ((20, 30), (500, 375), (64, 48), (32, 32), (33, 100))
MODES = ("L", "P", "RGBA", "CMYK", "RGB")


def _photo(rng, label, size, mode):
    """A class-dependent image (bright or dark) of the given size, saved in `mode`."""
    width, height = size
    base = 190 if label == 0 else 50
    pixels = np.clip(base + rng.integers(-40, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "P" else image.quantize(16)


COUNTS = (("train", 5), ("test", 2))


def _size_and_mode(i, label):
    return SIZES[(i + label) % len(SIZES)], MODES[(i + 2 * label) % len(MODES)]


def write_mixed_folder(root):
    rng = np.random.default_rng(0)
    for split, count in COUNTS:
        for label, name in enumerate(CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                size, mode = _size_and_mode(i, label)
                suffix = ".jpg" if mode in ("L", "CMYK", "RGB") else ".png"
                _photo(rng, label, size, mode).save(os.path.join(folder, f"{i:03d}{suffix}"))
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_mixed_folder(str(tmp_path_factory.mktemp("mixed")))


@pytest.mark.parametrize("mode", MODES + ("I;16",))
def test_every_colour_mode_becomes_rgb(tmp_path, mode):
    grey = np.full((4, 6), 200, np.uint8)
    if mode == "I;16":
        image = Image.new("I;16", (6, 4))
        image.frombytes((grey.astype("<u2") * 256).tobytes())
    else:
        image = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).convert(mode)
    path = str(tmp_path / ("x.tif" if mode == "I;16" else "x.png" if mode != "CMYK" else "x.jpg"))
    image.save(path)
    array, original = decode(open(path, "rb").read(), path)
    assert original == mode and array.shape == (4, 6, 3) and array.dtype == np.uint8
    # still light grey (the web palette of mode P holds 204, not 200)
    assert np.all(np.abs(array.astype(int) - 200) <= 5), array[0, 0]


def test_fit_resizes_the_shorter_side_and_takes_the_centre():
    # 40 x 80 (H x W): the left and right quarters black, the middle half white
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255
    fitted = fit(image, 20)  # shorter side 40 -> 20: 20 x 40, centre 20 x 20 = the white half
    assert fitted.shape == (20, 20, 3)
    assert np.all(fitted[:, 2:-2] == 255)
    same = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    assert fit(same, 32) is same  # already the model's size: untouched


def test_a_mixed_folder_fits_every_image_to_32_and_says_what_it_converted(mixed, tmp_path,
                                                                          caplog):
    import logging

    caplog.set_level(logging.INFO)
    loaded = load_image_folder(mixed, ("train", "test"), str(tmp_path / "cache"), size=32)
    assert loaded["train"].images.shape == (10, 32, 32, 3)
    assert loaded["test"].images.shape == (4, 32, 32, 3)
    written = [_size_and_mode(i, label) for _, count in COUNTS for label in range(2)
               for i in range(count)]
    modes = {mode: sum(m == mode for _, m in written) for mode in MODES if mode != "RGB"}
    listed = ", ".join(f"{mode}: {n}" for mode, n in sorted(modes.items()))
    assert f"converted {sum(modes.values())} image(s) to RGB ({listed})" in caplog.text
    resized = sum(size != (32, 32) for size, _ in written)
    assert f"resized and centre-cropped {resized} image(s) to 32x32" in caplog.text
    bright = loaded["train"].labels == 0
    means = loaded["train"].images.reshape(10, -1).mean(axis=1)
    assert means[bright].min() > means[~bright].max()  # the classes survive the conversions


def _config(mixed, tmp_path, model):
    from conftest import tiny_config_for

    config = tiny_config_for(mixed, str(tmp_path / "cache"))
    config.model.name = model
    config.train.batch_size, config.eval.batch_size = 4, 4
    config.train.epochs, config.train.lr_milestones = 2, (1,)
    config.data.decode_threads = 2
    return config


@pytest.mark.parametrize("model", ["cifar_resnet_8", "imagenet_resnet_18"])
def test_a_mixed_folder_trains_resumes_exports_and_evaluates(mixed, tmp_path, model):
    config = _config(mixed, tmp_path, model)
    _, _, result = resume_and_export(config, tmp_path, stop_at_step=3)
    assert result["examples"] == 4


def test_large_inputs_are_streamed_with_crops_from_seed_step_and_example(mixed, tmp_path):
    config = _config(mixed, tmp_path, "imagenet_resnet_18")
    train, test = load_splits(config.data, 224, seed=5)
    assert train.augmented_on_host and train.image_shape == (224, 224, 3)
    images, labels = train.read(np.arange(4), step=7)
    again, _ = train.read(np.arange(4), step=7)
    np.testing.assert_array_equal(images, again)  # a function of (seed, step, example)
    other_step, _ = train.read(np.arange(4), step=8)
    assert not np.array_equal(images, other_step)
    one, _ = train.read(np.arange(2, 3), step=7)  # independent of which rows a host reads
    np.testing.assert_array_equal(one[0], images[2])
    evaluated, _ = test.read(np.arange(4))
    np.testing.assert_array_equal(evaluated, test.read(np.arange(4))[0])  # centre crops
    assert list(labels) == [0, 0, 0, 0] and len(test) == 4
    json.dumps([len(train), len(test)])


def test_an_export_is_evaluated_only_on_the_classes_it_was_trained_on(image_folder, tmp_path):
    import shutil

    from bnjax import trained
    from bnjax.errors import DataError
    from bnjax.train import train_and_evaluate
    from conftest import tiny_config_for

    config = tiny_config_for(image_folder, str(tmp_path / "cache"))
    config.train.epochs, config.train.lr = 7, 0.4  # learns the three colours perfectly
    metrics = train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["test_accuracy"] == 1.0
    path = str(tmp_path / "model.bnjax")
    trained.export_workdir(str(tmp_path / "run"), path)
    assert trained.from_export(path).description["class_names"] == ["cat", "dog", "frog"]

    def folder_with(classes: dict) -> str:  # {new name: original class}
        root = tmp_path / "_".join(classes)
        for split in ("train", "test"):
            for new, old in classes.items():
                shutil.copytree(os.path.join(image_folder, split, old), root / split / new)
        return str(root)

    other = folder_with({"kitten": "cat", "puppy": "dog"})
    with pytest.raises(DataError, match=r"classes \['kitten', 'puppy'\], but .* was trained on "
                                        r"\['cat', 'dog', 'frog'\] \(kitten, puppy not among"):
        trained.evaluate_export(path, other)
    # a subset of the training classes is relabelled: frog is class 2 in training, 1 here
    subset = trained.evaluate_export(path, folder_with({"cat": "cat", "frog": "frog"}))
    assert subset["examples"] == 8 and subset["test_accuracy"] == 1.0


def test_evaluating_an_export_whose_data_is_elsewhere_asks_for_data_source(tiny_config,
                                                                         tmp_path):
    import shutil

    from bnjax import trained
    from bnjax.errors import DataError
    from bnjax.train import train_and_evaluate

    moved = str(tmp_path / "images")
    shutil.copytree(tiny_config.data.source, moved)
    tiny_config.data.source, tiny_config.train.epochs = moved, 1
    train_and_evaluate(tiny_config, str(tmp_path / "run"))
    path = str(tmp_path / "model.bnjax")
    trained.export_workdir(str(tmp_path / "run"), path)
    shutil.rmtree(moved)
    with pytest.raises(DataError, match=r"trained on .*images, which is not on this machine; "
                                        r"give --data_source=PATH"):
        trained.evaluate_export(path)
