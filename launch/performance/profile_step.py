"""Time (and optionally profile) the gradient of a CIFAR ResNet's loss on this machine.

    python launch/performance/profile_step.py [--model=cifar_resnet_20] [--batch=128] [--profile]

Prints the median ms of the forward pass, the BN-only gradient and the full gradient (the A/B
figures in docs/PERFORMANCE.md); with --profile, the XLA ops that took the most time in three
BN-only gradients, from a jax.profiler trace, as wall time (the busiest worker thread's share)
and as time summed over threads. XLA's own (Eigen) convolutions appear in the trace
only as begin/end markers, so they are not in that list: the gradient's time minus the list's
total is roughly theirs.
"""
import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

from bnjax import xla_flags

xla_flags.apply_defaults()  # bnjax's XLA:CPU settings, before JAX starts a backend

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bnjax import partition  # noqa: E402
from bnjax.config import base_config  # noqa: E402
from bnjax.state import initialize  # noqa: E402


def median_ms(function, *args, runs=10):
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cifar_resnet_20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    config = base_config()
    config.model.name = args.model
    setup, state = initialize(config, 10, (32, 32, 3), 1)
    frozen = setup.frozen
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch))

    def loss(trainable, frozen, x):
        variables = {"params": partition.merge(trainable, frozen),
                     "batch_stats": state.batch_stats}
        logits, _ = setup.model.apply(variables, x, train=True, mutable=["batch_stats"])
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(args.batch), y])

    bn_grad = jax.jit(jax.grad(loss))
    for name, function in (("forward", jax.jit(loss)), ("BN-only gradient", bn_grad),
                           ("full gradient", jax.jit(jax.grad(loss, argnums=(0, 1))))):
        print(f"{name:18s} {median_ms(function, state.trainable, frozen, x):7.1f} ms")
    if args.profile:
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder, create_perfetto_trace=True):
                for _ in range(3):
                    jax.block_until_ready(bn_grad(state.trainable, frozen, x))
            path = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]
            events = json.load(gzip.open(path))
        events = events["traceEvents"] if isinstance(events, dict) else events
        # A fusion runs split over XLA:CPU's worker threads at once: its wall time is about
        # the busiest thread's share, not the sum over threads.
        per_op = collections.defaultdict(collections.Counter)
        for event in events:
            if event.get("ph") == "X" and re.search(r"fusion|convolution|dot", event["name"]):
                name = re.sub(r"\.\d+$", "", event["name"])
                per_op[name][event["tid"]] += event["dur"] / 3000
        walls = {name: max(threads.values()) for name, threads in per_op.items()}
        print("  wall ms  thread ms  per BN-only gradient, traced XLA ops")
        for name, wall in sorted(walls.items(), key=lambda item: -item[1])[:12]:
            print(f"  {wall:7.1f}  {sum(per_op[name].values()):9.1f}  {name}")
        print(f"  {sum(walls.values()):7.1f}  traced ops in all; the rest of the gradient's time "
              "is mostly XLA's own (Eigen) convolutions, which the trace does not show")


if __name__ == "__main__":
    main()
