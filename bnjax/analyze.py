"""`bnjax analyze`: what BatchNorm learned (paper, section 5).

- gamma: histograms per stage and overall, and the fraction with |gamma| < 0.01;
- disabled channels: a channel of a normalisation layer that feeds a ReLU directly (in a
  ResNet the stem's `bn` and every block's `bn1`, in a VGG every layer) is *disabled* when the
  ReLU's output is 0 at every position of every test image. (A ResNet's `bn2` and
  `shortcut_bn` are summed before their ReLU, so no channel of theirs can be judged alone.)
- ablation: set the gammas with the smallest |gamma| (ranked over the whole network) to zero and
  measure test accuracy and loss against the fraction zeroed; optionally (`by_stage`,
  `by_block`, `by_layer`) zero one fraction's gammas in one stage, residual block or
  normalisation layer at a time, to see where a loss comes from.
Several runs (e.g. a `bn` and an `all` run) give a side-by-side report.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bnjax import data as data_lib
from bnjax import figures, partition, tables
from bnjax.data.augment import normalize
from bnjax.data.batches import eval_batches
from bnjax.models import parse_name
from bnjax.step import evaluate, make_eval_step, make_mesh, replicate

SMALL_GAMMA = 0.01
ABLATION_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
# the training fields that name a run beside its model and mode when two analysed runs share those
RECIPE_FIELDS = ("optimizer", "lr", "weight_decay", "epochs")


def _stage(path: str) -> str:
    """ResNets by stage (and the stem), VGGs by layer."""
    match = re.match(r"(stage\d+)_|(layer\d+)/", path)
    return next(group for group in match.groups() if group) if match else "stem"


def _block(path: str) -> str:
    """ResNets by residual block (and the stem), VGGs by layer."""
    match = re.match(r"(stage\d+_block\d+)/", path)
    return match.group(1) if match else _stage(path)


def _layer(path: str) -> str:
    """ResNets by normalisation layer inside a residual block (bn1, bn2, shortcut_bn), the stem
    and a VGG's layers whole (each has one)."""
    match = re.match(r"(stage\d+_block\d+/[^/]+)/", path)
    return match.group(1) if match else _block(path)


# how `bnjax analyze --by_stage / --by_block / --by_layer` groups the gammas
GROUPINGS = {"stage": _stage, "block": _block, "layer": _layer}


def _by_stage(gamma_by_layer: dict) -> dict:
    """{stage: every gamma of its layers}."""
    stages: dict = {}
    for path, values in gamma_by_layer.items():
        stages.setdefault(_stage(path), []).append(np.asarray(values))
    return {stage: np.concatenate(values) for stage, values in stages.items()}


def gammas(params) -> dict:
    """{BatchNorm module path: gamma vector}."""
    return {path[: -len("/scale")]: np.asarray(value)
            for path, value in partition.flatten(params).items()
            if partition.role_of(path) == "gamma"}


def gamma_statistics(gamma_by_layer: dict) -> dict:
    every = np.concatenate(list(gamma_by_layer.values()))
    result = {"count": int(every.size),
              "fraction_abs_below_0.01": float(np.mean(np.abs(every) < SMALL_GAMMA)),
              "fraction_negative": float(np.mean(every < 0)),
              "by_stage": {}}
    for stage, values in sorted(_by_stage(gamma_by_layer).items()):
        result["by_stage"][stage] = {"count": int(values.size),
                                     "fraction_abs_below_0.01":
                                         float(np.mean(np.abs(values) < SMALL_GAMMA))}
    return result


def relu_output_maxima(model, variables, data, batch_size: int) -> dict:
    """{ReLU-fed normalisation layer: each channel's largest ReLU output on `data`}. (The layers
    apply the ReLU themselves and record its output as 'relu_output'.)"""
    def batch_max(images):
        _, captured = model.apply(variables, normalize(images), train=False,
                                  mutable=["intermediates"])
        flat = partition.flatten(captured["intermediates"])
        return {path[: -len("/relu_output")]: jnp.max(out[0], axis=(0, 1, 2))
                for path, out in flat.items() if path.endswith("/relu_output")}

    batch_max = jax.jit(batch_max)
    maxima = None
    for images, _, weights in eval_batches(data, min(batch_size, len(data))):
        real = images[: int(weights.sum())]  # padding images are not test examples
        current = jax.device_get(batch_max(real))
        maxima = current if maxima is None else jax.tree.map(np.maximum, maxima, current)
    return maxima


def disabled_channels(model, variables, data, batch_size: int) -> dict:
    """Per ReLU-fed normalisation layer: how many channels never produce a positive output on
    `data`."""
    maxima = relu_output_maxima(model, variables, data, batch_size)
    layers = {path: int(np.sum(values <= 0)) for path, values in maxima.items()}
    channels = sum(v.size for v in maxima.values())
    return {"definition": "ReLU output 0 at every position of every test image, for "
                          "normalisation layers feeding a ReLU directly (in a ResNet the stem's "
                          "bn and each block's bn1, in a VGG every layer)",
            "channels": int(channels), "disabled": int(sum(layers.values())),
            "fraction_disabled": float(sum(layers.values()) / channels),
            "disabled_by_layer": layers}


def smallest_gammas(params, fraction: float) -> dict:
    """{gamma path: mask of its entries among the `fraction` of gammas of smallest |gamma|,
    ranked network-wide}."""
    flat = partition.flatten(params)
    paths = [p for p in flat if partition.role_of(p) == "gamma"]
    every = np.concatenate([np.abs(np.asarray(flat[p])) for p in paths])
    cut = np.zeros(every.size, bool)
    cut[np.argsort(every, kind="stable")[:int(round(fraction * every.size))]] = True
    sizes = np.cumsum([flat[p].size for p in paths])[:-1]
    return dict(zip(paths, np.split(cut, sizes)))


def zero_smallest_gammas(params, fraction: float, only=None):
    """params with the `fraction` of gammas of smallest |gamma| (ranked network-wide) set to 0;
    with `only` (a predicate on module paths), only those of them whose path it accepts."""
    return _zeroed(params, smallest_gammas(params, fraction), only)


def _zeroed(params, cut: dict, only=None):
    """params with the gammas in `cut` (smallest_gammas) set to 0 where only(path) holds."""
    flat = partition.flatten(params)
    for path, mask in cut.items():
        if mask.any() and (only is None or only(path)):
            flat[path] = np.where(mask.reshape(np.shape(flat[path])), 0.0,
                                  np.asarray(flat[path]))
    return partition.unflatten(flat)


def test_split(trained, data_source: str | None = None):
    """The trained model's test split, from `data_source` where given (else its run's)."""
    config = trained.config
    if data_source:
        config.data.source = data_source
    return data_lib.load_eval_split(config.data, parse_name(config.model.name).image_size,
                                    config.seed)


def all_params(trained) -> dict:
    """Every parameter of the trained model, trainable and frozen, in one tree, on the host."""
    return jax.device_get(trained.variables()["params"])


def test_metrics_of(trained, test):
    """A function: params (all_params' tree, e.g. with gammas zeroed) -> their test accuracy and
    loss on `test`, with the trained model's batch statistics."""
    mesh = make_mesh()
    eval_step = make_eval_step(trained.setup.model)
    batch_stats = jax.device_get(trained.state.batch_stats)

    def test_metrics(params) -> dict:
        # the whole tree goes in as "trainable" (frozen empty): gammas may be frozen
        state = trained.state.replace(trainable=params, batch_stats=batch_stats)
        result = evaluate(eval_step, mesh, replicate(state, mesh), replicate({}, mesh), test,
                          trained.config.eval.batch_size)
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"]}

    return test_metrics


def analyze(trained, data_source: str | None = None, by_stage: float | None = None,
            by_block: float | None = None, by_layer: float | None = None) -> dict:
    """All analyses of one trained model (bnjax.trained.TrainedModel) on its test split; with
    `by_stage`, `by_block` or `by_layer` (a fraction), also the accuracy with that fraction's
    gammas (ranked network-wide) zeroed in one stage, residual block or normalisation layer at a
    time, which tells where an ablation's loss comes from."""
    config = trained.config
    test = test_split(trained, data_source)
    params = all_params(trained)
    test_metrics = test_metrics_of(trained, test)
    ablation = []
    for fraction in ABLATION_FRACTIONS:  # each a pass over the test split: say how far it is
        logging.info("ablation: %g of the gammas zeroed", fraction)
        ablation.append({"fraction_zeroed": fraction,
                         **test_metrics(zero_smallest_gammas(params, fraction))})
    gamma_by_layer = gammas(params)
    result = {"model": config.model.name, "norm": config.model.norm, "mode": config.train.mode,
              "seed": config.seed,
              "recipe": {field: config.train[field] for field in RECIPE_FIELDS},
              "step": trained.description.get("step"),
              "gamma": gamma_statistics(gamma_by_layer),
              "disabled": disabled_channels(trained.setup.model, trained.variables(), test,
                                            config.eval.batch_size),
              "ablation": ablation,
              "_gammas": {k: v.tolist() for k, v in gamma_by_layer.items()}}
    for grouping, fraction in (("stage", by_stage), ("block", by_block), ("layer", by_layer)):
        if fraction is not None:
            result[f"ablation_by_{grouping}"] = ablation_by_group(
                params, fraction, GROUPINGS[grouping], test_metrics)
    return result


def ablation_by_group(params, fraction: float, group_of, test_metrics) -> dict:
    """The network-wide smallest `fraction` of gammas zeroed in one group (group_of(path): a
    stage, a block) at a time, the stem first: each group's test_metrics(ablated params), its
    gamma count and how many the cut zeroed there."""
    cut = smallest_gammas(params, fraction)
    groups = {}
    ordered = sorted({group_of(path) for path in cut}, key=tables.part_order)
    for number, group in enumerate(ordered, 1):
        def inside(path, group=group):
            return group_of(path) == group
        logging.info("ablation of %g of the gammas in %s (%d of %d)", fraction, group, number,
                     len(ordered))
        groups[group] = {**test_metrics(_zeroed(params, cut, inside)),
                         "gammas": sum(m.size for p, m in cut.items() if inside(p)),
                         "gammas_zeroed": int(sum(m.sum() for p, m in cut.items() if inside(p)))}
    return {"fraction_zeroed": fraction, "groups": groups}


def _other_norm(result: dict) -> str | None:
    """The run's normalisation when it is not BatchNorm (labels name only those)."""
    return None if result["norm"] == "batchnorm" else result["norm"]


def _label(result: dict) -> str:
    norm = f" ({_other_norm(result)})" if _other_norm(result) else ""
    return f"{result['model']}{norm} {result['mode']}"


def labels(results: list[dict]) -> list[str]:
    """A name per result: model, normalisation and mode, and where two results share those,
    the recipe fields and seed that tell them apart (e.g. "cifar_resnet_14 bn, optimizer adam,
    lr 0.03")."""
    base = [_label(r) for r in results]
    named = []
    for result, label in zip(results, base):
        twins = [r for r, other in zip(results, base) if other == label]
        details = [f"{field.replace('_', ' ')} {_field(result, field)}"
                   for field in (*RECIPE_FIELDS, "seed")
                   if len({str(_field(r, field)) for r in twins}) > 1]
        named.append(", ".join([label, *details]))
    return named


def _field(result: dict, field: str):
    return result["seed"] if field == "seed" else result.get("recipe", {}).get(field)


def report(results: list[dict]) -> str:
    """A Markdown table with one column per analysed run."""
    return tables.analysis_report(results, labels(results))


def write_outputs(results: list[dict], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index, result in enumerate(results, 1):
        norm = f"_{_other_norm(result)}" if _other_norm(result) else ""
        name = f"{index}_{result['model']}{norm}_{result['mode']}_seed{result['seed']}"
        path = os.path.join(out_dir, f"analysis_{name}.json")
        with open(path, "w") as f:
            json.dump({k: v for k, v in result.items() if not k.startswith("_")}, f, indent=2)
        written.append(path)
    names = labels(results)
    tables.write_ablation_csv(results, names, os.path.join(out_dir, "ablation.csv"))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(tables.analysis_report(results, names))
    figures.gamma_histograms([(n, _by_stage(r["_gammas"])) for n, r in zip(names, results)],
                             os.path.join(out_dir, "gamma_histograms.png"))
    figures.ablation_curves([(n, r["ablation"]) for n, r in zip(names, results)],
                            os.path.join(out_dir, "ablation.png"))
    return written + [os.path.join(out_dir, n) for n in
                      ("ablation.csv", "report.md", "gamma_histograms.png", "ablation.png")]
