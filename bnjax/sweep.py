"""`bnjax sweep`: a grid of runs (any config fields; bnjax.grid), run one after another or
printed as commands, and every finished run gathered into a CSV, a Markdown table and the figure
that shows what varies (bnjax.results, bnjax.tables, bnjax.figures).

Each run lives in ROOT/<field=value__...>; finished runs of the same config are left as they
are, unfinished ones resume from their checkpoints, and a folder holding a run of another config
stops the sweep before anything trains. With --replicas=K, up to K points that differ only in
numbers (bnjax.replicas.REPLICA_FIELDS) train together as one compiled program, each in its own
folder.
"""
from __future__ import annotations

import json
import os
import shlex

from absl import logging

from bnjax import figures, replicas, results, tables
from bnjax.errors import ConfigError
from bnjax.grid import expand, parse_grid, show


def train_command(config_arg: str, base_overrides: dict, workdir: str,
                  overrides: dict) -> str:
    """The `bnjax train` command of one point: the config file, the command line's own
    --config.FIELD overrides, then the point's."""
    words = ["bnjax", "train", f"--config={config_arg}", f"--workdir={workdir}",
             *(f"--config.{f}={show(v)}" for f, v in {**base_overrides, **overrides}.items())]
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
    from bnjax.group import train_group  # imports jax; printing needs none of it
    from bnjax.run import Diverged
    from bnjax.files import write_json

    for number, group in enumerate(groups, 1):
        names = [name for name, _, _ in group]
        logging.info("sweep %d/%d: %s", number, len(groups), ", ".join(names))
        workdirs = [os.path.join(root, name) for name in names]
        try:
            train_group([point for _, _, point in group], workdirs)
        except Diverged as diverged:  # a point alone: recorded, and the sweep goes on
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
        overrides = [f"--config.{f}={show(v)}" for f, v in base_overrides.items()]
        commands = [" ".join(shlex.quote(w) for w in [
            "bnjax", "sweep", f"--config={config_arg}", f"--workdir={root}",
            f"--grid={grid_spec}", f"--replicas={max_replicas}", f"--group={number}",
            *overrides]) for number in numbers]
    for command in commands:
        print(command)
    return commands


def aggregate(root: str) -> list[dict]:
    """Write ROOT/results.csv, ROOT/results.md and the figure that shows what varies
    (figures.choose); when the runs differ in training mode or repeat a setting with other
    seeds, also the pivot by mode in results.md and ROOT/accuracy_by_mode.png."""
    rows = results.collect(root)
    if not rows:
        raise ConfigError(f"{root} holds no finished runs (no */metrics.json)")
    tables.write_csv(rows, os.path.join(root, "results.csv"))
    pivot = results.by_mode(rows)
    pivot_adds = results.pivot_adds(pivot)
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write(tables.results_table(rows))
        if pivot_adds:
            f.write("\nTest accuracy (%) by training mode:\n\n" + tables.pivot_table(pivot))
    written = ["results.csv", "results.md"]
    done = results.finished(rows)
    if done:
        kind, arguments = figures.choose(done)
        name = {"accuracy_vs_field": f"accuracy_vs_{'_'.join(arguments)}",
                "heatmap": f"accuracy_{'_x_'.join(arguments)}"}.get(kind, kind)
        written.append(f"{name}.png")
        getattr(figures, kind)(done, *arguments, os.path.join(root, written[-1]))
    if pivot_adds:
        written.append("accuracy_by_mode.png")
        figures.accuracy_by_mode(pivot, os.path.join(root, written[-1]))
    logging.info("wrote %s in %s", ", ".join(written), root)
    return rows
