"""`bnjax summary`: parameter counts of the configured model, in total and per training mode."""
from __future__ import annotations

from bnjax import config as config_lib
from bnjax import partition
from bnjax.models import build_model, parse_name
from bnjax.initial_weights import variable_shapes

KNOWN_CLASS_COUNTS = {"cifar100": 100, "imagenet2012": 1000}


def class_count(config) -> int:
    """Classes without reading data: known tfds sets, 1000 for ImageNet models, else 10."""
    if config.data.source in KNOWN_CLASS_COUNTS:
        return KNOWN_CLASS_COUNTS[config.data.source]
    return 1000 if parse_name(config.model.name).family == "imagenet_resnet" else 10


def counts(config) -> dict:
    """{'total': n, 'bn': n, 'modes': {mode: trainable count}} for the configured model."""
    spec = parse_name(config.model.name)
    model = build_model(config.model, class_count(config))
    params = variable_shapes(model, (spec.image_size, spec.image_size, 3))["params"]
    modes = {mode: partition.trainable_count(
        partition.split(params, partition.param_labels(params, mode))[0], mode,
        config.train.random_k) for mode in config_lib.MODES}
    return {"total": partition.count(params), "bn": modes["bn"], "modes": modes}


def norm_name(config) -> str:
    norm = config.model.norm
    return "BatchNorm parameters" if norm == "batchnorm" else f"{norm} parameters"


def render(config) -> str:
    config_lib.validate(config)
    result = counts(config)
    lines = [f"model {config.model.name} ({class_count(config)} classes)",
             f"total parameters       {result['total']:>13,}",
             f"{norm_name(config):<22} {result['bn']:>13,}  (gamma and beta)",
             "trainable parameters by train.mode:"]
    for mode, n in result["modes"].items():
        marker = "  <- configured" if mode == config.train.mode else ""
        lines.append(f"  {mode:<20} {n:>13,}  ({100.0 * n / result['total']:.3f}%){marker}")
    return "\n".join(lines)


def parameter_table(params, param_labels) -> str:
    """One line per parameter leaf: path, shape, role, and whether it trains or stays frozen."""
    labels = partition.flatten(param_labels)
    rows = [(path, "x".join(map(str, leaf.shape)), partition.role_of(path), labels[path])
            for path, leaf in sorted(partition.flatten(params).items())]
    widths = [max(len(row[i]) for row in rows + [("parameter", "shape", "role", "")])
              for i in range(3)]
    header = ("parameter".ljust(widths[0]), "shape".ljust(widths[1]), "role".ljust(widths[2]))
    return "\n".join(["  ".join(header) + "  learns"] +
                     ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths))
                      + f"  {row[3]}" for row in rows])
