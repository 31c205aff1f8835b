"""PyTorch in and out: every weight as safetensors in open_lth's and torchvision's names
(bnjax.torch_layout), and such files (or bnjax's own) as model.base, checked key by key."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from bnjax import multitask, partition, torch_layout, train, trained, weight_files
from bnjax.config import base_config, validate
from bnjax.errors import CheckpointError, ConfigError
from bnjax.models import build_model
from bnjax.state import initialize

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LAYOUTS = json.load(open(os.path.join(FIXTURES, "torch_layouts.json")))
BNJAX_MODEL = {"torchvision_resnet18": ("imagenet_resnet_18", 1000),
               "torchvision_resnet50": ("imagenet_resnet_50", 1000),
               "torchvision_resnet18_5": ("imagenet_resnet_18", 5),
               "torchvision_resnet50_5": ("imagenet_resnet_50", 5)}


def _shapes(model_name: str, num_classes: int) -> dict:
    """{bnjax path: zeros} of a model, its shapes found without drawing a weight."""
    config = base_config().model
    config.name = model_name
    size = 64 if model_name.startswith("imagenet") else 32
    model = build_model(config, num_classes)
    shapes = jax.eval_shape(lambda key, x: model.init(key, x, train=False), jax.random.key(0),
                            jnp.zeros((1, size, size, 3)))
    return {f"{collection}/{path}": np.zeros(leaf.shape, leaf.dtype)
            for collection, tree in shapes.items()
            for path, leaf in partition.flatten(tree).items()}


@pytest.mark.parametrize("pytorch_name", list(LAYOUTS))
def test_bnjax_writes_the_names_and_shapes_of_open_lths_and_torchvisions_models(pytorch_name):
    model_name, num_classes = BNJAX_MODEL.get(pytorch_name, (pytorch_name, 10))
    written = torch_layout.state_dict(model_name, _shapes(model_name, num_classes), 0)
    assert {name: list(value.shape) for name, value in written.items()} == dict(
        LAYOUTS[pytorch_name])
    assert torch_layout.layout_of(model_name) == (
        "torchvision" if pytorch_name.startswith("torchvision") else "open_lth")


def _config_on(path: str, model_name: str, **model_fields):
    config = base_config()
    config.model.name = model_name
    config.model.base = path
    config.train.mode = "none"
    for field, value in model_fields.items():
        config.model[field] = value
    return config


def _logits(config, num_classes: int, images) -> np.ndarray:
    setup, state = initialize(config, num_classes, images.shape[1:], 1,
                              base=trained.load_base(config.model.base))
    variables = {"params": partition.merge(state.trainable, setup.frozen),
                 "batch_stats": state.batch_stats}
    return np.asarray(setup.model.apply(variables, images, train=False))


@pytest.mark.parametrize("depth", [18, 50])
def test_a_torchvision_file_gives_the_logits_pytorch_computed(tmp_path, depth):
    from fixtures import torch_layout_inputs as inputs

    tensors = inputs.state_dict(LAYOUTS[f"torchvision_resnet{depth}_{inputs.CLASSES}"])
    path = str(tmp_path / f"resnet{depth}.safetensors")
    safetensors.numpy.save_file(tensors, path)
    expected = np.load(os.path.join(FIXTURES, "torchvision_resnets.npz"))[f"logits_resnet{depth}"]
    config = _config_on(path, f"imagenet_resnet_{depth}", base_output="base")
    logits = _logits(config, inputs.CLASSES, inputs.images())
    # float32 against PyTorch's float64 through every layer
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # the output layer drawn from the seed instead: other logits
    config.model.base_output = "seed"
    assert not np.allclose(_logits(config, inputs.CLASSES, inputs.images()), expected,
                           atol=1e-2 * np.abs(expected).max())


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory, image_folder):
    """A tiny BN-only run, exported."""
    from conftest import tiny_config_for

    root = tmp_path_factory.mktemp("trained")
    config = tiny_config_for(image_folder, str(root / "cache"))
    train.train_and_evaluate(config, str(root / "run"))
    trained.export_workdir(str(root / "run"), str(root / "run.bnjax"))
    return str(root / "run.bnjax"), str(root / "run")


@pytest.mark.parametrize("layout", ["torch", "bnjax"])
def test_a_materialized_export_read_back_as_a_base_gives_its_logits(trained_export, tmp_path,
                                                                    layout):
    export_path, _ = trained_export
    model = trained.from_export(export_path)
    path = str(tmp_path / "weights.safetensors")
    trained.write_safetensors(model, path, layout, export_path)
    metadata = weight_files.read_metadata(path)
    assert metadata["source_sha256"] == trained.file_sha256(export_path)
    assert metadata["layout"] == {"torch": "open_lth", "bnjax": "bnjax"}[layout]
    assert json.loads(metadata["config"])["seed"] == model.config.seed
    names = safetensors.numpy.load_file(path)
    assert ("bn.num_batches_tracked" in names) == (layout == "torch")

    images = np.random.default_rng(0).standard_normal((4, 32, 32, 3), np.float32)
    expected = np.asarray(model.setup.model.apply(model.variables(), images, train=False))
    config = _config_on(path, model.config.model.name, base_output="base")
    classes = model.description["num_classes"]
    np.testing.assert_array_equal(_logits(config, classes, images), expected)
    # base_norm=init: the convolutions kept, BatchNorm as the seed draws it, fresh statistics
    config.model.base_norm = "init"
    setup, state = initialize(config, classes, (32, 32, 3), 1, base=trained.load_base(path))
    assert np.array_equal(state.batch_stats["bn"]["var"], np.ones_like(
        model.state.batch_stats["bn"]["var"]))
    gamma = partition.merge(state.trainable, setup.frozen)["bn"]["scale"]
    assert not np.array_equal(gamma, model.variables()["params"]["bn"]["scale"])
    assert np.array_equal(setup.frozen["conv"]["kernel"],
                          model.variables()["params"]["conv"]["kernel"])


def test_materialize_of_a_run_folder_and_its_refusals(trained_export, tmp_path):
    _, workdir = trained_export
    model = trained.from_workdir(workdir)
    path = str(tmp_path / "run.safetensors")
    trained.write_safetensors(model, path, "torch", f"{workdir} (checkpoint step 6)")
    assert weight_files.read_metadata(path)["step"] == str(model.description["step"])
    model.config.model.norm = "groupnorm"
    with pytest.raises(CheckpointError, match="--layout=bnjax"):
        trained.write_safetensors(model, str(tmp_path / "gn.safetensors"), "torch", workdir)


def _refused(tmp_path, tensors: dict, model_name: str, match: str) -> None:
    path = str(tmp_path / "bad.safetensors")
    safetensors.numpy.save_file(tensors, path)
    with pytest.raises(ConfigError, match=match):
        initialize(_config_on(path, model_name), len(tensors["fc.bias"]), (32, 32, 3), 1,
                   base=trained.load_base(path))


def test_a_missing_extra_or_misshapen_key_is_refused_naming_it(trained_export, tmp_path):
    export_path, _ = trained_export
    path = str(tmp_path / "good.safetensors")
    trained.write_safetensors(trained.from_export(export_path), path, "torch", export_path)
    good = safetensors.numpy.load_file(path)
    name = "cifar_resnet_8_4"
    _refused(tmp_path, {k: v for k, v in good.items() if k != "blocks.1.conv2.weight"}, name,
             "needs the key 'blocks.1.conv2.weight'")
    _refused(tmp_path, {**good, "blocks.9.conv1.weight": good["conv.weight"]}, name,
             "key 'blocks.9.conv1.weight' is not a weight of cifar_resnet_8_4")
    _refused(tmp_path, {**good, "conv.weight": good["conv.weight"][:2]}, name,
             r"key 'conv.weight' has shape \(2, 3, 3, 3\); cifar_resnet_8_4 needs \(4, 3, 3, 3\)")
    # a head of other classes: fine when the seed draws the head, refused when it is taken
    classes = trained.from_export(export_path).description["num_classes"]
    other_head = {**good, "fc.weight": np.zeros((7, 16), np.float32),
                  "fc.bias": np.zeros(7, np.float32)}
    safetensors.numpy.save_file(other_head, str(tmp_path / "head.safetensors"))
    config = _config_on(str(tmp_path / "head.safetensors"), name)
    initialize(config, classes, (32, 32, 3), 1, base=trained.load_base(config.model.base))
    config.model.base_output = "base"
    with pytest.raises(ConfigError, match=r"key 'fc\.bias' has shape \(7,\)"):
        initialize(config, classes, (32, 32, 3), 1, base=trained.load_base(config.model.base))


def test_base_files_and_fields_are_checked_before_work(tmp_path, image_folder):
    config = base_config()
    config.data.source = image_folder
    config.model.base_output = "base"
    with pytest.raises(ConfigError, match="model.base_output.*model.base, which is empty"):
        validate(config)
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"")
    config.model.base = str(weights)
    with pytest.raises(ConfigError, match="ends in .bnjax, .safetensors, .pt, .pth"):
        validate(config)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        trained.load_base(str(broken))


def test_a_base_is_read_once_until_its_file_changes(tmp_path):
    path = tmp_path / "base.safetensors"
    safetensors.numpy.save_file({"conv.weight": np.ones((4, 3, 3, 3), np.float32)}, str(path))
    first = trained.load_base(str(path))
    assert trained.load_base(str(path)) is first  # the tasks of one run share the read
    safetensors.numpy.save_file({"conv.weight": np.zeros((4, 3, 3, 3), np.float32)}, str(path))
    again = trained.load_base(str(path))
    assert again.sha256 != first.sha256 and not again.tensors["conv.weight"].any()
    with pytest.raises(CheckpointError, match="missing.safetensors is not a file"):
        trained.load_base(str(tmp_path / "missing.safetensors"))


def test_a_pt_file_without_torch_says_how_to_convert_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: (
        (_ for _ in ()).throw(ImportError(name)) if name == "torch"
        else real_import(name, *args, **kwargs)))
    path = tmp_path / "resnet.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="safetensors.torch"):
        weight_files.read_state_dict(str(path))


def test_a_pt_state_dict_reads_as_its_safetensors_twin(tmp_path):
    torch = pytest.importorskip("torch")  # torch is optional: CI has none; run where it is
    tensors = {"conv.weight": np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2),
               "bn.num_batches_tracked": np.asarray(3, np.int64)}
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, str(tmp_path / "w.pt"))
    read = weight_files.read_state_dict(str(tmp_path / "w.pt"))
    assert {k: v.tolist() for k, v in read.items()} == {k: v.tolist()
                                                       for k, v in tensors.items()}


def test_tasks_on_a_safetensors_base_record_and_check_it(trained_export, tiny_config, tmp_path):
    """A PyTorch-layout file as the base of the tasks of one bundle, as a bnjax export is."""
    export_path, _ = trained_export
    path = str(tmp_path / "base.safetensors")
    trained.write_safetensors(trained.from_export(export_path), path, "torch", export_path)
    tiny_config.model.base = path
    tiny_config.train.mode = "bn_output"
    source = tiny_config.data.source
    tiny_config.data.tasks = f"a={source};b={source}"
    results = multitask.train_tasks(tiny_config, str(tmp_path / "run"))
    out = str(tmp_path / "run.bnjax")
    trained.export_workdir(str(tmp_path / "run"), out)
    for result in trained.evaluate_tasks(out):
        assert result["test_accuracy"] == result["recorded_test_accuracy"]
        assert result["test_accuracy"] == results[result["task"]]["test_accuracy"]
    changed = safetensors.numpy.load_file(path)
    changed["conv.weight"] = changed["conv.weight"] * 2
    shutil.move(path, path + ".orig")
    safetensors.numpy.save_file(changed, path)
    with pytest.raises(CheckpointError, match="sha256"):
        trained.evaluate_export(out, task="b")
