"""`bnjax sweep`: a grid of runs (any config fields), run one after another or printed as
commands, and every finished run's metrics.json gathered into a CSV, a Markdown table and the
paper-style plot of test accuracy against the number of trainable parameters.

A grid is written `FIELD=V1,V2;FIELD=V1,...`, e.g.
`model.name=cifar_resnet_14,cifar_resnet_20;train.mode=bn,output;seed=0,1`. Values are parsed
by the type of the field in the config. Each run lives in ROOT/<field=value,...>; finished runs
of the same config are left as they are, unfinished ones resume from their checkpoints, and a
folder holding a run of another config stops the sweep before anything trains. With
--replicas=K, up to K points that differ only in numbers (bnjax.replicas.REPLICA_FIELDS) train
together as one compiled program, each in its own folder.
Run folders are named FIELD=VALUE__FIELD=VALUE, e.g. model.name=cifar_resnet_14__train.mode=bn.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import shlex

from absl import logging

from bnjax import config as config_lib
from bnjax import replicas
from bnjax.errors import ConfigError


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_value(field: str, text: str, current):
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(current, (int, float)):
            return type(current)(text)
        if isinstance(current, tuple):
            return tuple(_number(v) for v in text.strip("()").split("/") if v)
        return text
    except ValueError:
        raise ConfigError(f"sweep grid: {field}={text!r} is not a valid "
                          f"{type(current).__name__}") from None


def parse_grid(spec: str, config) -> list[tuple[str, list]]:
    """[(field, [values])] in the order given. Tuples are written with '/': lr_milestones=2/3."""
    known = dict(config_lib.flat_fields(config))
    grid = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        field, sep, values = part.partition("=")
        field = field.strip()
        if not sep or not values:
            raise ConfigError(f"sweep grid: '{part}' is not FIELD=V1,V2,...")
        if field not in known:
            raise ConfigError(f"sweep grid: '{field}' is not a config field (see bnjax summary)")
        grid.append((field, [_parse_value(field, v.strip(), known[field])
                             for v in values.split(",")]))
    if not grid:
        raise ConfigError("sweep grid is empty; give --grid='train.mode=bn,all;seed=0,1'")
    return grid


def _set(config, field: str, value) -> None:
    *groups, name = field.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[name] = value


def _run_name(overrides: dict) -> str:
    def show(value):
        return "/".join(map(str, value)) if isinstance(value, tuple) else str(value)

    # "__" between fields keeps commas free for lists of workdirs (bnjax analyze --workdir=A,B)
    return "__".join(f"{field}={show(value)}" for field, value in overrides.items()).replace(
        os.sep, "_")


def expand(config, grid) -> list[tuple[str, dict, object]]:
    """[(run name, overrides, validated config)] for every point of the grid."""
    runs = []
    for values in itertools.product(*(v for _, v in grid)):
        overrides = dict(zip((f for f, _ in grid), values))
        point = config.copy_and_resolve_references()
        for field, value in overrides.items():
            _set(point, field, value)
        try:
            config_lib.validate(point)
        except ConfigError as error:
            raise ConfigError(f"sweep point {_run_name(overrides)}: {error}") from None
        runs.append((_run_name(overrides), overrides, point))
    return runs


def _show(value) -> str:
    return f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)


def train_command(config_arg: str, base_overrides: dict, workdir: str,
                  overrides: dict) -> str:
    """The `bnjax train` command of one point: the config file, the command line's own
    --config.FIELD overrides, then the point's."""
    words = ["bnjax", "train", f"--config={config_arg}", f"--workdir={workdir}",
             *(f"--config.{f}={_show(v)}" for f, v in {**base_overrides, **overrides}.items())]
    return " ".join(shlex.quote(w) for w in words)


def _refuse_other_configs(root: str, runs) -> None:
    """ConfigError, before anything trains, for points whose folder holds a run of another
    config (e.g. the same grid made with other epochs): its results are not this point's."""
    from bnjax import runinfo

    clashes = []
    for name, _, point in runs:
        run_json = os.path.join(root, name, "run.json")
        if not os.path.exists(run_json):
            continue
        with open(run_json) as f:
            differences = runinfo.differences_from_saved(json.load(f)["config"],
                                                         point.to_dict())
        if differences:
            field, old, new = differences[0]
            clashes.append(f"{name} ({field}: {old!r} there, {new!r} here)")
    if clashes:
        raise ConfigError(f"{root} holds runs of another config: {'; '.join(clashes[:4])}"
                          f"{' ...' if len(clashes) > 4 else ''}. Give the sweep a new "
                          "--workdir, or move those folders away.")


def plan_groups(runs, max_replicas: int) -> list[list]:
    """The points of `runs` in groups that train as one program each (bnjax.replicas)."""
    indices = replicas.plan([point for _, _, point in runs], max_replicas)
    return [[runs[i] for i in group] for group in indices]


def _describe_groups(groups) -> str:
    return "; ".join(f"group {number} ({len(group)}): {', '.join(n for n, _, _ in group)}"
                     for number, group in enumerate(groups, 1))


def run_sweep(config, grid_spec: str, root: str, launcher: str, config_arg: str,
              base_overrides: dict, max_replicas: int = 1,
              only_group: int | None = None) -> list[str]:
    """Run (launcher 'local') or print (launcher 'print') every grid point, up to max_replicas
    of them at a time as replicas of one compiled program; return the commands printed.
    only_group: run just that group (1-based) of the plan, e.g. one per machine."""
    runs = expand(config, parse_grid(grid_spec, config))  # every point valid before any runs
    if max_replicas < 1:
        raise ConfigError(f"--replicas={max_replicas}: give 1 or more")
    groups = plan_groups(runs, max_replicas)
    if max_replicas > 1:
        logging.info("sweep: %d points in %d group(s): %s", len(runs), len(groups),
                     _describe_groups(groups))
    if only_group is not None:
        if not 1 <= only_group <= len(groups):
            raise ConfigError(f"--group={only_group}: the sweep has groups 1 to {len(groups)}")
        groups = [groups[only_group - 1]]
    if launcher == "print":
        return _print_commands(groups, config_arg, base_overrides, root, grid_spec,
                               max_replicas, only_group)
    _refuse_other_configs(root, [point for group in groups for point in group])
    from bnjax import train  # imports jax; printing needs none of it
    from bnjax.metrics import write_json

    for number, group in enumerate(groups, 1):
        names = [name for name, _, _ in group]
        logging.info("sweep %d/%d: %s", number, len(groups), ", ".join(names))
        workdirs = [os.path.join(root, name) for name in names]
        try:
            train.train_group([point for _, _, point in group], workdirs)
        except train.Diverged as diverged:  # a point alone: recorded, and the sweep goes on
            logging.warning("sweep point %s diverged: %s", names[0], diverged)
            write_json(os.path.join(workdirs[0], "metrics.json"), diverged.metrics)
    aggregate(root)
    return []


def _print_commands(groups, config_arg, base_overrides, root, grid_spec, max_replicas,
                    only_group) -> list[str]:
    """One `bnjax train` per point; with replicas, one `bnjax sweep --group=N` per group."""
    if max_replicas == 1:
        commands = [train_command(config_arg, base_overrides, os.path.join(root, name),
                                  overrides)
                    for group in groups for name, overrides, _ in group]
    else:
        numbers = [only_group] if only_group else range(1, len(groups) + 1)
        overrides = [f"--config.{f}={_show(v)}" for f, v in base_overrides.items()]
        commands = [" ".join(shlex.quote(w) for w in [
            "bnjax", "sweep", f"--config={config_arg}", f"--workdir={root}",
            f"--grid={grid_spec}", f"--replicas={max_replicas}", f"--group={number}",
            *overrides]) for number in numbers]
    for command in commands:
        print(command)
    return commands


COLUMNS = ("run", "model", "mode", "seed", "epochs", "trainable_params", "total_params",
           "status", "diverged_at_step", "test_accuracy", "test_loss", "train_accuracy",
           "wall_time_s")
# config fields that COLUMNS already show
_SHOWN_FIELDS = ("model.name", "train.mode", "seed", "train.epochs")


def collect(root: str, fields: tuple = ()) -> list[dict]:
    """A row per finished run under `root`: COLUMNS, then every config field whose value
    differs between the runs (e.g. model.norm) and the given `fields`, from each run's
    run.json (read with today's fields: a field newer than a run has its default there)."""
    from bnjax.runinfo import saved_config

    rows, configs = [], []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                metrics = json.load(f)
            with open(os.path.join(root, name, "run.json")) as f:
                saved = saved_config(json.load(f)["config"])
            configs.append(dict(config_lib.flat_fields(saved)))
            rows.append({"run": name, **{c: metrics.get(c) for c in COLUMNS[1:]},
                         "status": metrics.get("status", "finished")})
    candidates = sorted({f for config in configs for f in config} - set(_SHOWN_FIELDS))
    varied = [f for f in candidates  # values may be lists: compared by their JSON
              if len({json.dumps(config.get(f)) for config in configs}) > 1]
    shown = varied + [f for f in fields if f not in varied]
    for row, config in zip(rows, configs):
        row.update({f: config.get(f) for f in shown})
    return rows


def varied_fields(rows: list[dict]) -> list[str]:
    return [key for key in rows[0] if key not in COLUMNS] if rows else []


def _accuracy_cell(row: dict) -> str:
    if row["status"] == "diverged":
        return f"diverged (step {row['diverged_at_step']})"
    return f"{100 * row['test_accuracy']:.2f}"


def _finished(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["test_accuracy"] is not None]


def _family(model_name: str) -> str:
    """The panel a model is drawn in: CIFAR ResNets by width 16 (depth varies) or by depth
    (width varies), VGGs and ImageNet ResNets by name."""
    from bnjax.models import parse_name

    spec = parse_name(model_name)
    if spec.family == "cifar_vgg":
        return f"VGG-{spec.depth}"
    if spec.family == "imagenet_resnet":
        return "ImageNet ResNets"
    return "deep ResNets (width 16)" if spec.width == 16 else f"ResNet-{spec.depth}, varying width"


def _lines(rows: list[dict]) -> dict:
    """{legend label: rows}: one line per training mode and value of each varied field."""
    lines, varied = {}, varied_fields(rows)
    for row in rows:
        label = ", ".join([row["mode"], *(f"{f.split('.')[-1]}={row[f]}" for f in varied)])
        lines.setdefault(label, []).append(row)
    return dict(sorted(lines.items()))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({_family(r["model"]) for r in rows})
    figure, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.5), squeeze=False)
    for axis, family in zip(axes[0], families):
        for label, members in _lines(rows).items():
            points = sorted((r["trainable_params"], 100 * r["test_accuracy"]) for r in members
                            if _family(r["model"]) == family and r["trainable_params"])
            if points:
                axis.plot(*zip(*points), marker="o", label=label)
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(family)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *body]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def _model_order(name: str) -> tuple:
    """cifar_resnet_14 before cifar_resnet_110, narrower before wider."""
    from bnjax.models import parse_name

    spec = parse_name(name)
    return spec.family, spec.depth, spec.width


def _value_order(value) -> tuple:
    """Numbers by value, before anything else by its JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0, value, ""
    return 1, 0, json.dumps(value)


def markdown_table(rows: list[dict]) -> str:
    """A line per run, best first within each model."""
    varied = varied_fields(rows)
    header = ["model", "mode", *varied, "seed", "epochs", "trainable", "test accuracy (%)"]
    body = [[r["model"], r["mode"], *(str(r[f]) for f in varied), str(r["seed"]),
             str(r["epochs"]), f"{r['trainable_params']:,}", _accuracy_cell(r)]
            for r in sorted(rows, key=lambda r: (_model_order(r["model"]),
                                                 -(r["test_accuracy"] or -1)))]
    return _markdown(header, body)


def by_mode(rows: list[dict]) -> tuple[list[str], list[str], dict]:
    """(modes, header of the line labels, {line label cells: {mode: [accuracy %, ...]}}): a line
    per model, value of each other varied field and epochs; a list per seed. Diverged runs
    are left out (the table lists them)."""
    varied, rows = varied_fields(rows), _finished(rows)
    modes = [m for m in config_lib.MODES if any(r["mode"] == m for r in rows)]
    lines: dict = {}
    for r in sorted(rows, key=lambda r: (_model_order(r["model"]),
                                         *(_value_order(r[f]) for f in varied), r["epochs"])):
        label = (r["model"], *(str(r[f]) for f in varied), str(r["epochs"]))
        lines.setdefault(label, {}).setdefault(r["mode"], []).append(100 * r["test_accuracy"])
    return modes, ["model", *varied, "epochs"], lines


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def markdown_pivot(pivot: tuple) -> str:
    """Test accuracy with a column per training mode, from by_mode(rows); several seeds give
    their mean, half their range and their count."""
    modes, header, lines = pivot
    body = []
    for label, accuracies in lines.items():
        cells = []
        for values in (accuracies.get(mode, []) for mode in modes):
            if len(values) > 1:
                spread = (max(values) - min(values)) / 2
                cells.append(f"{_mean(values):.2f} ± {spread:.2f} ({len(values)} seeds)")
            else:
                cells.append(f"{values[0]:.2f}" if values else "")
        body.append([*label, *cells])
    return _markdown([*header, *modes], body)


def plot_by_mode(pivot: tuple, path: str) -> None:
    """Grouped bars of by_mode(rows): a group per line, a bar per training mode (seeds
    averaged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes, header, lines = pivot
    labels = [dict(zip(header, label)) for label in lines]
    labels = [{**label, "epochs": f"{label['epochs']} epochs"} for label in labels]
    shared = [f for f in header if len({label[f] for label in labels}) == 1]
    width = 0.8 / len(modes)
    figure, axis = plt.subplots(figsize=(max(5, 1.3 * len(lines) * len(modes) ** 0.5), 4))
    for index, mode in enumerate(modes):
        offset = (index - (len(modes) - 1) / 2) * width
        bars = [(group + offset, _mean(acc[mode]))
                for group, acc in enumerate(lines.values()) if mode in acc]
        drawn = axis.bar(*zip(*bars), width, label=mode)
        axis.bar_label(drawn, fmt="%.1f", fontsize=7)
    axis.set_xticks(range(len(lines)), ["\n".join(v for f, v in label.items() if f not in shared)
                                        for label in labels], fontsize=8)
    axis.set_title(", ".join(labels[0][f] for f in shared), fontsize=10)
    axis.set_ylim(0, 100)
    axis.set_ylabel("test accuracy (%)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def aggregate(root: str) -> list[dict]:
    """Write ROOT/results.csv, ROOT/results.md, ROOT/accuracy_vs_trainable.png and, when the
    runs differ in training mode or repeat a setting with other seeds, the pivot by mode in
    results.md and ROOT/accuracy_by_mode.png."""
    rows = collect(root)
    if not rows:
        raise ConfigError(f"{root} holds no finished runs (no */metrics.json)")
    with open(os.path.join(root, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pivot = by_mode(rows)
    modes, _, lines = pivot
    pivot_adds = len(modes) > 1 or any(len(v) > 1 for acc in lines.values() for v in acc.values())
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write(markdown_table(rows))
        if pivot_adds:
            f.write("\nTest accuracy (%) by training mode:\n\n" + markdown_pivot(pivot))
    written = ["results.csv", "results.md"]
    if _finished(rows):
        written.append("accuracy_vs_trainable.png")
        plot(_finished(rows), os.path.join(root, written[-1]))
    if pivot_adds:
        written.append("accuracy_by_mode.png")
        plot_by_mode(pivot, os.path.join(root, written[-1]))
    logging.info("wrote %s in %s", ", ".join(written), root)
    return rows
