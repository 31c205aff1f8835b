"""The figures of bnjax's results: accuracy against trainable parameters (the paper's shape),
against one numeric field, as a heat map over two, bars by training mode, and the gamma
histograms and ablation curves of `bnjax analyze`, and deeper against wider networks. Each
drawing function draws one PNG."""
from __future__ import annotations

from statistics import mean

import contextlib

import numpy as np

from bnjax.results import finished, numeric_fields, value_order, varied_fields

# Fields whose values are spread over orders of magnitude: drawn on a log axis.
LOG_SCALE_FIELDS = ("train.lr", "train.weight_decay", "train.gamma_lr_scale",
                    "train.beta_lr_scale", "train.random_k")


@contextlib.contextmanager
def _figure(path: str, size: tuple, dpi: int = 120):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=size)
    try:
        yield figure
        figure.tight_layout()
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)


def family(model_name: str) -> str:
    """The panel a model is drawn in: CIFAR ResNets by width 16 (depth varies) or by depth
    (width varies), VGGs and ImageNet ResNets by name."""
    from bnjax.models import parse_name

    spec = parse_name(model_name)
    if spec.family == "cifar_vgg":
        return f"VGG-{spec.depth}"
    if spec.family == "imagenet_resnet":
        return "ImageNet ResNets"
    return "deep ResNets (width 16)" if spec.width == 16 else f"ResNet-{spec.depth}, varying width"


def lines_by(rows: list[dict], leave_out: tuple = ()) -> dict:
    """{legend label: rows}: one line per training mode and value of each varied field not
    left out."""
    lines, varied = {}, [f for f in varied_fields(rows) if f not in leave_out]
    for row in rows:
        label = ", ".join([row["mode"], *(f"{f.split('.')[-1]}={row[f]}" for f in varied)])
        lines.setdefault(label, []).append(row)
    return dict(sorted(lines.items()))


def _short_name(model_name: str) -> str:
    """A model as the figures name it: ResNet-20, ResNet-14-32 (width 32), VGG-11."""
    from bnjax.models import parse_name

    spec = parse_name(model_name)
    if spec.family == "cifar_vgg":
        return f"VGG-{spec.depth}"
    return f"ResNet-{spec.depth}" + ("" if spec.width in (16, None) or
                                     spec.family != "cifar_resnet" else f"-{spec.width}")


def _seed_spread(rows: list[dict], key, order=value_order) -> list[tuple]:
    """[(key, mean, lowest, highest test accuracy %, rows)] of the rows grouped by key(row),
    sorted by order(key): seeds averaged, their range kept."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    spread = []
    for k, members in sorted(groups.items(), key=lambda item: order(item[0])):
        accuracies = [100 * r["test_accuracy"] for r in members]
        spread.append((k, mean(accuracies), min(accuracies), max(accuracies), members))
    return spread


def _errorbar(axis, spread: list[tuple], x_of, **style):
    """Means joined by a line, each with a bar over its seeds' range (none for one seed)."""
    xs = [x_of(k) for k, *_ in spread]
    means = [m for _, m, _, _, _ in spread]
    below = [m - low for _, m, low, _, _ in spread]
    above = [high - m for _, m, _, high, _ in spread]
    return axis.errorbar(xs, means, yerr=[below, above], capsize=3, **style)


def _subtitle(rows: list[dict]) -> str:
    """What every row shares, for a title: the model and the epochs where one."""
    models = {r["model"] for r in rows}
    epochs = {r["epochs"] for r in rows}
    parts = ([_short_name(next(iter(models)))] if len(models) == 1 else []) + \
        ([f"{next(iter(epochs))} epochs"] if len(epochs) == 1 else [])
    seeds = len({r.get("seed") for r in rows})
    return ", ".join(parts + ([f"mean of {seeds} seeds, bars their range"] if seeds > 1 else []))


def accuracy_vs_trainable(rows: list[dict], path: str) -> None:
    """Test accuracy against trainable parameters, a panel per model family, a line per mode
    (seeds averaged, their range as a bar), each point named by its model."""
    rows = finished(rows)
    families = sorted({family(r["model"]) for r in rows})
    shared = _subtitle(rows)
    with _figure(path, (6 * len(families), 4.5)) as figure:
        for index, name in enumerate(families, 1):
            axis = figure.add_subplot(1, len(families), index)
            for label, members in lines_by(rows).items():
                members = [r for r in members
                           if family(r["model"]) == name and r["trainable_params"]]
                if not members:
                    continue
                spread = _seed_spread(members, lambda r: (r["trainable_params"], r["model"]),
                                      order=lambda k: k)
                _errorbar(axis, spread, lambda k: k[0], marker="o", label=label)
                for (params, model), accuracy, *_ in spread:
                    axis.annotate(_short_name(model), (params, accuracy), fontsize=7,
                                  textcoords="offset points", xytext=(4, 4))
            axis.set_xscale("log")
            axis.set(xlabel="trainable parameters", ylabel="test accuracy (%)")
            axis.set_title(f"{name}: {shared}" if shared else name, fontsize=10)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)


def _log_axis(field: str, values) -> bool:
    values = [v for v in values if v is not None]
    return field in LOG_SCALE_FIELDS and all(v > 0 for v in values)


def accuracy_vs_field(rows: list[dict], field: str, path: str) -> None:
    """Test accuracy against one numeric field (log axis for lr, weight decay and their kin),
    a line per mode and value of every other varied field; seeds averaged."""
    rows = finished(rows)
    with _figure(path, (6, 4.2)) as figure:
        axis = figure.add_subplot()
        for label, members in lines_by(rows, leave_out=(field,)).items():
            _errorbar(axis, _seed_spread(members, lambda r: r[field]), lambda x: x,
                      marker="o", label=label)
        values = sorted({r[field] for r in rows})
        if _log_axis(field, values):
            axis.set_xscale("log")
            axis.minorticks_off()
        axis.set_xticks(values, [_tick(v) for v in values])  # 0.3, not 3x10^-1
        axis.set(xlabel=field, ylabel="test accuracy (%)")
        axis.set_title(_subtitle(rows) or f"test accuracy against {field}", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def heatmap(rows: list[dict], x_field: str, y_field: str, path: str, title: str = "") -> None:
    """Test accuracy over two fields, a cell per pair of values ('div.' where the run
    diverged); seeds averaged."""
    xs = sorted({r[x_field] for r in rows}, key=value_order)
    ys = sorted({r[y_field] for r in rows}, key=value_order)
    cells: dict = {}
    for r in rows:
        cells.setdefault((ys.index(r[y_field]), xs.index(r[x_field])), []).append(r)
    values = np.full((len(ys), len(xs)), np.nan)
    labels = [["-" for _ in xs] for _ in ys]
    for (i, j), members in cells.items():
        done = finished(members)
        if done:
            values[i, j] = mean([100 * r["test_accuracy"] for r in done])
            labels[i][j] = f"{values[i, j]:.1f}"
        else:
            labels[i][j] = "div."
    with _figure(path, (1.1 * len(xs) + 2, 0.7 * len(ys) + 1.6)) as figure:
        axis = figure.add_subplot()
        image = axis.imshow(values, cmap="viridis", aspect="auto")
        middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
        for i in range(len(ys)):
            for j in range(len(xs)):
                color = "0.5" if not np.isfinite(values[i, j]) else \
                    "black" if values[i, j] > middle else "white"
                axis.text(j, i, labels[i][j], ha="center", va="center", color=color)
        axis.set_xticks(range(len(xs)), [_tick(x) for x in xs])
        axis.set_yticks(range(len(ys)), [_tick(y) for y in ys])
        axis.set(xlabel=x_field, ylabel=y_field)
        axis.set_title(title or "test accuracy (%)", fontsize=10)
        figure.colorbar(image, ax=axis)


def accuracy_by_mode(pivot: tuple, path: str) -> None:
    """Grouped bars of results.by_mode(rows): a group per line, a bar per training mode
    (seeds averaged)."""
    modes, header, lines = pivot
    labels = [dict(zip(header, label)) for label in lines]
    labels = [{**label, "epochs": f"{label['epochs']} epochs"} for label in labels]
    shared = [f for f in header if len({label[f] for label in labels}) == 1]
    width = 0.8 / len(modes)
    with _figure(path, (max(5, 1.3 * len(lines) * len(modes) ** 0.5), 4)) as figure:
        axis = figure.add_subplot()
        for index, mode in enumerate(modes):
            offset = (index - (len(modes) - 1) / 2) * width
            groups = [(group + offset, acc[mode]) for group, acc in enumerate(lines.values())
                      if mode in acc]
            means = [mean(values) for _, values in groups]
            spread = [[m - min(v) for m, (_, v) in zip(means, groups)],
                      [max(v) - m for m, (_, v) in zip(means, groups)]]
            drawn = axis.bar([x for x, _ in groups], means, width, label=mode, yerr=spread,
                             capsize=2)  # seeds' range; none for one seed
            axis.bar_label(drawn, fmt="%.1f", fontsize=7)
        axis.set_xticks(range(len(lines)), ["\n".join(v for f, v in label.items()
                                                      if f not in shared)
                                            for label in labels], fontsize=8)
        several = any(len(values) > 1 for acc in lines.values() for values in acc.values())
        axis.set_title(", ".join([labels[0][f] for f in shared]
                                 + (["mean of seeds, bars their range"] if several else [])),
                       fontsize=10)
        axis.set_ylim(0, 100)
        axis.set_ylabel("test accuracy (%)")
        axis.legend()


def choose(rows: list[dict]) -> tuple[str, tuple]:
    """The figure that shows what varies: (name, arguments after rows) of
    accuracy_vs_trainable where models vary, accuracy_vs_field for one numeric field, heatmap
    for two, else accuracy_vs_trainable."""
    if len({r["model"] for r in rows}) > 1:
        return "accuracy_vs_trainable", ()
    numeric = numeric_fields(rows)
    if len(numeric) == 1:
        return "accuracy_vs_field", (numeric[0],)
    others = [f for f in varied_fields(rows) if f not in numeric]
    if len(numeric) == 2 and not others and len({r["mode"] for r in rows}) == 1:
        return "heatmap", (numeric[0], numeric[1])
    return "accuracy_vs_trainable", ()


def gamma_histograms(series: list[tuple[str, dict]], path: str) -> None:
    """Histograms of gamma, a panel per stage and one overall: series = [(label, {stage:
    array of gammas})]."""
    stages = sorted({stage for _, by_stage in series for stage in by_stage},
                    key=lambda stage: (stage != "stem", stage))
    panels = ["overall"] + stages
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    with _figure(path, (4.2 * columns, 3.4 * rows), dpi=110) as figure:
        for index, panel in enumerate(panels, 1):
            axis = figure.add_subplot(rows, columns, index)
            for label, by_stage in series:
                # networks of different families name their stages differently (a VGG's
                # are not a ResNet's): a series appears only in the panels it has gammas for
                values = [np.asarray(v) for stage, v in by_stage.items()
                          if panel in ("overall", stage)]
                if values:
                    axis.hist(np.concatenate(values), bins=60, alpha=0.55, label=label)
            axis.set(title=f"gamma, {panel}", xlabel="gamma", ylabel="channels")
            axis.legend(fontsize=7)


def ablation_curves(series: list[tuple[str, list]], path: str) -> None:
    """Test accuracy against the fraction of gammas zeroed: series = [(label, ablation
    points)]."""
    with _figure(path, (5, 3.8), dpi=110) as figure:
        axis = figure.add_subplot()
        for label, points in series:
            axis.plot([100 * a["fraction_zeroed"] for a in points],
                      [100 * a["test_accuracy"] for a in points], marker="o", label=label)
        axis.set(xlabel="gammas set to zero, smallest |gamma| first (%)",
                 ylabel="test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend()


def depth_and_width_lines(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """[(label, rows by BatchNorm parameters)] for the CIFAR ResNets of the narrowest width
    (depth varies) and those of the smallest depth (width varies); the network they share is
    on both."""
    from bnjax.models import parse_name

    specs = {r["model"]: parse_name(r["model"]) for r in rows}
    narrowest = min(spec.width for spec in specs.values())
    shallowest = min(spec.depth for spec in specs.values())
    by_params = sorted(rows, key=lambda r: r["trainable_params"])
    return [(f"deeper (width {narrowest})",
             [r for r in by_params if specs[r["model"]].width == narrowest]),
            (f"wider (ResNet-{shallowest})",
             [r for r in by_params if specs[r["model"]].depth == shallowest])]


def depth_against_width(rows: list[dict], path: str, title: str = "") -> None:
    """The paper's deeper-against-wider figure: test accuracy against BatchNorm parameters,
    a line each of depth_and_width_lines, every point named. rows: model, trainable_params,
    test_accuracy."""
    named = set()
    with _figure(path, (6.4, 4.4)) as figure:
        axis = figure.add_subplot()
        for (label, members), style, below in zip(depth_and_width_lines(rows), ("o-", "s--"),
                                                  (False, True)):
            axis.plot([r["trainable_params"] for r in members],
                      [100 * r["test_accuracy"] for r in members], style, label=label)
            for r in members:
                if r["model"] in named:
                    continue
                named.add(r["model"])
                axis.annotate(_short_name(r["model"]),
                              (r["trainable_params"], 100 * r["test_accuracy"]),
                              textcoords="offset points", xytext=(4, -12 if below else 6),
                              fontsize=8)
        axis.margins(x=0.1)  # room for the rightmost point's name
        axis.set(xlabel="BatchNorm parameters (trainable)", ylabel="test accuracy (%)")
        axis.set_title(title or "BN only: deeper against wider", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend()
