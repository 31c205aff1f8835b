"""Whether a residual block's ablation loss is one layer's or their interaction
(docs/REPRODUCTION.md): the network-wide smallest fraction of gammas zeroed in every combination
of one block's normalisation layers (bn1, bn2, shortcut_bn), printed as a markdown table of
test accuracy with one column per export. `bnjax analyze --by_layer` gives the single layers,
`--by_block` all of them together.

    python launch/studies/layer_combinations.py --block=stage2_block0 --fraction=0.5 \
      --export=docs/reproduction/r14_bn_20.bnjax,docs/reproduction/r14_32_bn_20.bnjax \
      --data_source=../shared/data/cifar10-jpeg.tar.gz
"""
from __future__ import annotations

import argparse
import itertools

from bnjax import analyze, partition, tables, trained


def block_layers(params, block: str) -> list[str]:
    """The normalisation layers (module paths) of `block` that have a gamma, in network order."""
    layers = {path.rsplit("/", 1)[0] for path in partition.flatten(params)
              if path.startswith(block + "/") and partition.role_of(path) == "gamma"}
    return sorted(layers, key=tables.part_order)


def combinations(layers: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty combination of `layers`, singles first."""
    return [combo for size in range(1, len(layers) + 1)
            for combo in itertools.combinations(layers, size)]


def accuracies(params, block: str, fraction: float, test_metrics) -> dict:
    """{"nothing": the test accuracy of params as they are, and for each combination of
    `block`'s layers ("bn1+bn2", ...): the accuracy with the cut in those layers only}.
    test_metrics: params -> {"test_accuracy": ...} (analyze.test_metrics_of)."""
    layers = block_layers(params, block)
    if not layers:
        raise SystemExit(f"the network has no normalisation layer under {block}/; give "
                         "--block=stageS_blockB of that network (e.g. stage2_block0)")
    result = {"nothing": test_metrics(params)["test_accuracy"]}
    for combo in combinations(layers):
        ablated = analyze.zero_smallest_gammas(
            params, fraction, only=lambda path, combo=combo: path.rsplit("/", 1)[0] in combo)
        result["+".join(layer.rsplit("/", 1)[1] for layer in combo)] = \
            test_metrics(ablated)["test_accuracy"]
    return result


def export_accuracies(export: str, block: str, fraction: float, data_source: str | None) -> dict:
    """accuracies() of an export on its test split (or `data_source`'s)."""
    model = trained.from_export(export)
    test_metrics = analyze.test_metrics_of(model, analyze.test_split(model, data_source))
    return accuracies(analyze.all_params(model), block, fraction, test_metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="exports, comma-separated")
    parser.add_argument("--block", default="stage2_block0")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--data_source", default=None)
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction={args.fraction} is not a fraction of the gammas; give a "
                     "number in (0, 1], e.g. --fraction=0.5")
    exports = args.export.split(",")
    columns = [export_accuracies(e, args.block, args.fraction, args.data_source)
               for e in exports]
    rows = [[f"{args.block}: {combo}", *(f"{100 * c[combo]:.2f}" if combo in c else "-"
                                         for c in columns)]
            for combo in dict.fromkeys(k for c in columns for k in c)]
    print(tables.markdown(["cut in", *(e.rsplit("/", 1)[-1] for e in exports)], rows))


if __name__ == "__main__":
    main()
