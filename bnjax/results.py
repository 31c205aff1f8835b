"""The results of a root of run folders, as rows: what `bnjax aggregate`, `bnjax sweep` and the
study scripts tabulate and draw (bnjax.tables, bnjax.figures)."""
from __future__ import annotations

import json
import os

from bnjax import config as config_lib
from bnjax.config import is_number
from bnjax.errors import ConfigError

COLUMNS = ("run", "model", "mode", "seed", "epochs", "trainable_params", "total_params",
           "status", "diverged_at_step", "test_accuracy", "test_loss", "train_accuracy",
           "wall_time_s", "branched")
# config fields that COLUMNS already show
_SHOWN_FIELDS = ("model.name", "train.mode", "seed", "train.epochs")


def collect(root: str, fields: tuple = ()) -> list[dict]:
    """A row per finished (or diverged) run under `root`: COLUMNS, then every config field
    whose value differs between the runs (e.g. model.norm) and the given `fields`, from each
    run's run.json (read with today's fields: a field newer than a run has its default
    there)."""
    from bnjax.runinfo import saved_config

    if not os.path.isdir(root):
        raise ConfigError(f"--workdir={root} is not a folder; give the sweep's root folder")
    rows, configs = [], []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.json")
        if os.path.exists(path):
            metrics = _read_json(path)
            run = _read_json(os.path.join(root, name, "run.json"))
            configs.append(dict(config_lib.flat_fields(saved_config(run["config"]))))
            rows.append({"run": name, **{c: metrics.get(c) for c in COLUMNS[1:]},
                         "status": metrics.get("status", "finished"),
                         "branched": branch_summary(run.get("branches", []))})
    candidates = sorted({f for config in configs for f in config} - set(_SHOWN_FIELDS))
    varied = [f for f in candidates  # values may be lists: compared by their JSON
              if len({json.dumps(config.get(f)) for config in configs}) > 1]
    shown = varied + [f for f in fields if f not in varied]
    for row, config in zip(rows, configs):
        row.update({f: config.get(f) for f in shown})
    return rows


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} cannot be read ({error}); a run stopped while writing it? "
                          "Train that run again to rewrite it, or move its folder away") from None


def branch_summary(branches: list) -> str:
    """'at step 10: train.lr 10 -> 0.01; ...': what --branch changed, and when."""
    return "; ".join(f"at step {b['at_step']}: " + ", ".join(
        f"{c['field']} {c['was']} -> {c['now']}" for c in b["changes"]) for b in branches)


def shipped_metrics_path(name: str, shipped: str) -> str:
    """Where run `name`'s metrics.json is committed: `<name>.metrics.json` in `shipped`, a run
    named METHOD/TASK as METHOD__TASK.metrics.json (one flat folder)."""
    return os.path.join(shipped, f"{name.replace('/', '__')}.metrics.json")


def run_metrics(name: str, runs: str, shipped: str) -> dict | None:
    """The metrics.json of run `name`: from its folder under `runs`, or, where that folder is not
    on this machine, the copy committed in `shipped` (shipped_metrics_path); None where neither
    exists."""
    for path in (os.path.join(runs, name, "metrics.json"), shipped_metrics_path(name, shipped)):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def named_runs(names: tuple, runs: str, shipped: str) -> tuple[list[dict], list[str]]:
    """([run_metrics with 'run' added] of the named runs found, in order; [names not found])."""
    found, missing = [], []
    for name in names:
        metrics = run_metrics(name, runs, shipped)
        if metrics is None:
            missing.append(name)
        else:
            found.append({**metrics, "run": name})
    return found, missing


def varied_fields(rows: list[dict]) -> list[str]:
    """The config fields of the rows beyond COLUMNS (those that vary, and any asked for)."""
    return [key for key in rows[0] if key not in COLUMNS] if rows else []


def numeric_fields(rows: list[dict]) -> list[str]:
    """The varied fields whose values are all numbers and not all equal."""
    return [f for f in varied_fields(rows)
            if all(is_number(r[f]) for r in rows) and len({r[f] for r in rows}) > 1]


def finished(rows: list[dict]) -> list[dict]:
    """The rows with a test accuracy (not diverged)."""
    return [row for row in rows if row["test_accuracy"] is not None]


def model_order(name: str) -> tuple:
    """cifar_resnet_14 before cifar_resnet_110, narrower before wider."""
    from bnjax.models import parse_name

    spec = parse_name(name)
    return spec.family, spec.depth, spec.width


def value_order(value) -> tuple:
    """Numbers by value, before anything else by its JSON."""
    if is_number(value):
        return 0, value, ""
    return 1, 0, json.dumps(value)


def by_mode(rows: list[dict]) -> tuple[list[str], list[str], dict]:
    """(modes, header of the line labels, {line label cells: {mode: [accuracy %, ...]}}): a line
    per model, value of each other varied field and epochs; a list per seed. Diverged runs
    are left out (the table lists them)."""
    varied, rows = varied_fields(rows), finished(rows)
    modes = [m for m in config_lib.MODES if any(r["mode"] == m for r in rows)]
    lines: dict = {}
    for r in sorted(rows, key=lambda r: (model_order(r["model"]),
                                         *(value_order(r[f]) for f in varied), r["epochs"])):
        label = (r["model"], *(str(r[f]) for f in varied), str(r["epochs"]))
        lines.setdefault(label, {}).setdefault(r["mode"], []).append(100 * r["test_accuracy"])
    return modes, ["model", *varied, "epochs"], lines


def pivot_adds(pivot: tuple) -> bool:
    """Whether by_mode's pivot says more than the plain table: several modes, or seeds."""
    modes, _, lines = pivot
    return len(modes) > 1 or any(len(v) > 1 for acc in lines.values() for v in acc.values())
