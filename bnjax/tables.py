"""Markdown and CSV tables of results: a sweep's runs, the pivot by training mode, and the
analysis report of `bnjax analyze`."""
from __future__ import annotations

from statistics import mean

import csv
import re

from bnjax.config import MODES
from bnjax.results import model_order, value_order, varied_fields


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *body]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def accuracy_cell(row: dict) -> str:
    """Test accuracy in %, or where the run diverged."""
    if row["status"] == "diverged":
        return f"diverged (step {row['diverged_at_step']})"
    return f"{100 * row['test_accuracy']:.2f}"


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _mode_order(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def results_table(rows: list[dict]) -> str:
    """A line per run, by model, mode, then each varied field's values in their order (not by
    accuracy: a sweep over lr reads as a curve), then seed."""
    varied = varied_fields(rows)
    header = ["model", "mode", *varied, "seed", "epochs", "trainable", "test accuracy (%)"]
    ordered = sorted(rows, key=lambda r: (model_order(r["model"]), _mode_order(r["mode"]),
                                          *(value_order(r[f]) for f in varied), r["seed"]))
    body = [[r["model"], r["mode"], *(str(r[f]) for f in varied), str(r["seed"]),
             str(r["epochs"]), f"{r['trainable_params']:,}", accuracy_cell(r)]
            for r in ordered]
    if any(r.get("branched") for r in rows):  # --branch changed these runs' configs midway
        header.append("branched (--branch)")
        for line, r in zip(body, ordered):
            line.append(r.get("branched") or "")
    return markdown(header, body)


def pivot_table(pivot: tuple) -> str:
    """Test accuracy with a column per training mode, from results.by_mode(rows); several
    seeds give their mean, half their range and their count."""
    modes, header, lines = pivot
    body = []
    for label, accuracies in lines.items():
        cells = []
        for values in (accuracies.get(mode, []) for mode in modes):
            if len(values) > 1:
                spread = (max(values) - min(values)) / 2
                cells.append(f"{mean(values):.2f} ± {spread:.2f} ({len(values)} seeds)")
            else:
                cells.append(f"{values[0]:.2f}" if values else "")
        body.append([*label, *cells])
    return markdown([*header, *modes], body)


def analysis_report(results: list[dict], labels: list[str]) -> str:
    """bnjax analyze's results as a Markdown table with one column per run."""
    rows = [["gammas", *(f"{r['gamma']['count']:,}" for r in results)],
            ["abs(gamma) < 0.01", *(f"{100 * r['gamma']['fraction_abs_below_0.01']:.1f}%"
                                    for r in results)],
            ["gamma < 0", *(f"{100 * r['gamma']['fraction_negative']:.1f}%" for r in results)],
            ["disabled channels (ReLU-fed BNs)", *(
                f"{r['disabled']['disabled']}/{r['disabled']['channels']} "
                f"({100 * r['disabled']['fraction_disabled']:.1f}%)" for r in results)]]
    for index, point in enumerate(results[0]["ablation"]):
        rows.append([f"accuracy, {100 * point['fraction_zeroed']:.0f}% smallest gammas zeroed",
                     *(f"{100 * r['ablation'][index]['test_accuracy']:.2f}%" for r in results)])
    reported: set = set()  # the stem is a stage, a block and a layer: one row
    for grouping in ("stage", "block", "layer"):
        rows += _ablation_by_group_rows(results, f"ablation_by_{grouping}", reported)
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|",
             *("| " + " | ".join(cells) + " |" for cells in rows)]
    return "\n".join(lines) + "\n\nDisabled channel: " + results[0]["disabled"]["definition"] \
        + ".\n"


def _ablation_by_group_rows(results: list[dict], field: str, reported: set) -> list[list[str]]:
    """A row per group of `bnjax analyze --by_stage`, `--by_block` or `--by_layer`'s ablation
    (`field`) not in `reported` (which it extends), in network order; "-" where a run has no
    such group or no such ablation."""
    by_group = [r.get(field) for r in results]
    if not any(by_group):
        return []
    fraction = next(b for b in by_group if b)["fraction_zeroed"]
    groups = sorted({group for b in by_group if b for group in b["groups"]} - reported,
                    key=part_order)
    reported.update(groups)
    return [[f"accuracy, {100 * fraction:.0f}% smallest gammas zeroed in {group} only",
             *(_group_cell(b["groups"][group]) if b and group in b["groups"] else "-"
               for b in by_group)]
            for group in groups]


def part_order(name: str) -> tuple:
    """Parts of a network (the stem, stages, blocks, a block's layers, a VGG's layers) in
    network order: the stem first, then by the numbers in the name (layer10 after layer9,
    stage1_block10 after stage1_block9), a block's layers by name (bn1, bn2, shortcut_bn)."""
    block, _, layer = name.partition("/")
    return name != "stem", tuple(int(number) for number in re.findall(r"\d+", block)), layer


def _group_cell(point: dict) -> str:
    return (f"{100 * point['test_accuracy']:.2f}% ({point['gammas_zeroed']:,} of "
            f"{point['gammas']:,} zeroed)")


def write_ablation_csv(results: list[dict], labels: list[str], path: str) -> None:
    """A line per run and fraction of gammas zeroed; `run` is the run's label in report.md and
    the plots, `norm` tells runs of one model apart."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "model", "norm", "mode", "seed", "fraction_zeroed",
                         "test_accuracy", "test_loss"])
        for label, r in zip(labels, results):
            for a in r["ablation"]:
                writer.writerow([label, r["model"], r.get("norm", "batchnorm"), r["mode"],
                                 r["seed"], a["fraction_zeroed"], a["test_accuracy"],
                                 a["test_loss"]])


def epochs_table(rows: list[dict], histories: dict) -> str:
    """A line per run (results_table's order) with its test accuracy after every epoch, the
    last in bold: histories = {run name: metrics.json's history}."""
    ordered = sorted(rows, key=lambda r: (model_order(r["model"]), _mode_order(r["mode"]),
                                          r["seed"]))
    epochs = max(len(histories[r["run"]]) for r in ordered)
    header = ["model", "mode", "trainable params",
              *(f"epoch {e}" if e < epochs else f"epoch {e} (final)"
                for e in range(1, epochs + 1))]
    body = []
    for r in ordered:
        accuracies = [f"{100 * h['test_accuracy']:.2f}" for h in histories[r["run"]]]
        if accuracies:
            accuracies[-1] = f"**{accuracies[-1]}**"
        body.append([r["model"], r["mode"], f"{r['trainable_params']:,}",
                     *accuracies, *[""] * (epochs - len(accuracies))])
    return markdown(header, body)
