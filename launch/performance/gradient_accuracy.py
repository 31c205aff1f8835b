"""How close float32 gradients are to float64, bnjax against PyTorch, over many weight draws and
batches (docs/PERFORMANCE.md, "Gradient accuracy"): the distribution behind the fixture's one
case (tests/test_numerics.py).

ResNet-20 at the paper's initial state (gamma ~ U[0,1), beta 0), train mode, on batches of 128
CIFAR-10 test images (the shared JPEG archive, in bnjax's order: images 0-127, 128-255, ...).
Weights from two sources: bnjax's seeds (its portable generator) and open_lth's own
initialisation in PyTorch (kaiming_normal_ on conv and linear weights, PyTorch's default linear
bias, gamma U[0,1), beta 0) under torch seeds. The exact gradient is PyTorch's in float64 on the
same float32 inputs; both frameworks' float32 gradients are measured against it by the relative
L2 error over each role (BatchNorm betas, gammas, every convolution kernel entry).

    python launch/performance/gradient_accuracy.py --cifar=../shared/data/cifar10-jpeg.tar.gz \
        --draws=5 --batches=5 --out=docs/performance/gradient_accuracy.jsonl

Needs torch (2.13.0 CPU was used) beside bnjax.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from bnjax import xla_flags

xla_flags.apply_defaults()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
import make_torch_reference as ref  # noqa: E402
import reference_inputs  # noqa: E402

from bnjax import initial_weights, partition  # noqa: E402
from bnjax.data.image_folder import load_image_folder  # noqa: E402

ROLES = ("beta", "gamma", "kernel")
BATCH = 128


def bnjax_draw(seed: int) -> dict:
    flat = partition.flatten(initial_weights.initial_variables(reference_inputs.model(), seed,
                                                               (32, 32, 3)))
    return {path: np.asarray(value) for path, value in flat.items()}


def open_lth_draw(seed: int, like: dict) -> dict:
    """open_lth's initialisation of the same network in PyTorch, as bnjax variables."""
    torch.manual_seed(seed)
    n, width = reference_inputs.BLOCKS_PER_STAGE, reference_inputs.WIDTH
    model = ref.Model([(width, n), (2 * width, n), (4 * width, n)])
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.rand(module.weight.shape)
            module.bias.data.zero_()
    state = model.state_dict()
    return {path: ref.from_torch(state[ref.torch_name(path.split("/", 1)[1], n)].numpy(), path)
            .astype(np.float32) for path in like}


def bnjax_gradients_function():
    """jitted (params, batch_stats, x, targets) -> float32 gradients of bnjax's model."""
    model = reference_inputs.model()

    def loss(params, batch_stats, x, targets):
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
        log_p = jax.nn.log_softmax(logits)
        return -jax.numpy.mean(jax.numpy.take_along_axis(log_p, targets[:, None], axis=1))

    return jax.jit(jax.grad(loss))


def role_of(path: str) -> str | None:
    if "fc/" in path:
        return None
    return "beta" if path.endswith("/bias") else "gamma" if path.endswith("/scale") else "kernel"


def relative_l2(grads: dict, exact: dict) -> dict:
    sums = {role: [0.0, 0.0] for role in ROLES}
    for path, value in exact.items():
        role = role_of(path)
        if role:
            sums[role][0] += float(np.sum((grads[path] - value) ** 2))
            sums[role][1] += float(np.sum(value ** 2))
    return {role: float(np.sqrt(error / norm)) for role, (error, norm) in sums.items()}


def measure(variables: dict, images: np.ndarray, targets: np.ndarray, grad_fn) -> dict:
    x32 = reference_inputs.normalized(images).astype(np.float32)  # the inputs both get
    # contiguous NCHW, as open_lth's loaders give: torch.tensor keeps a transposed view's
    # channels_last strides, and PyTorch's CPU path for those rounds about 4x worse
    nchw = np.ascontiguousarray(x32.transpose(0, 3, 1, 2))
    _, exact = ref.gradients(variables, nchw.astype(np.float64), targets, torch.float64)
    _, torch32 = ref.gradients(variables, nchw, targets, torch.float32)
    tree = partition.unflatten({path: np.asarray(v) for path, v in variables.items()})
    ours = grad_fn(tree["params"], tree["batch_stats"], x32, targets)
    bnjax32 = {f"params/{path}": np.asarray(g, np.float64)
               for path, g in partition.flatten(ours).items()}
    return {"bnjax": relative_l2(bnjax32, exact), "torch": relative_l2(torch32, exact)}


def summary(rows: list) -> str:
    lines = ["| weights | cases | role | bnjax median (min-max) | PyTorch median (min-max) | "
             "bnjax <= PyTorch |", "|---|---|---|---|---|---|"]
    for source in sorted({row["weights"] for row in rows}):
        chosen = [row for row in rows if row["weights"] == source]
        for role in ROLES:
            ours = [100 * row["bnjax"][role] for row in chosen]
            theirs = [100 * row["torch"][role] for row in chosen]
            wins = sum(a <= b for a, b in zip(ours, theirs))
            lines.append(
                f"| {source} | {len(chosen)} | {role} | {statistics.median(ours):.3f}% "
                f"({min(ours):.3f}-{max(ours):.3f}) | {statistics.median(theirs):.3f}% "
                f"({min(theirs):.3f}-{max(theirs):.3f}) | {wins}/{len(chosen)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", required=True)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--out", required=True, help="JSON lines, one per case")
    parser.add_argument("--cache_dir", default=os.path.expanduser("~/.cache/bnjax"))
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    test = load_image_folder(args.cifar, ("test",), args.cache_dir)["test"]
    grad_fn = bnjax_gradients_function()
    rows = []
    with open(args.out, "w") as out:
        for seed in range(args.draws):
            ours = bnjax_draw(seed)
            for source, variables in (("bnjax seed", ours),
                                      ("open_lth torch seed", open_lth_draw(seed, ours))):
                for index in range(args.batches):
                    rows_slice = slice(index * BATCH, (index + 1) * BATCH)
                    row = {"weights": source, "seed": seed, "batch": index,
                           **measure(variables, test.images[rows_slice],
                                     test.labels[rows_slice].astype(np.int32), grad_fn)}
                    rows.append(row)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
    print(summary(rows))


if __name__ == "__main__":
    main()
