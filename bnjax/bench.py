"""`bnjax bench`: how fast the configured model trains, evaluates and is fed, on this backend.

Measured the way ../shared/bench/torch_reference.py measures the PyTorch peer: random weights and
random data, each timed step (or call of train.steps_per_call steps) blocked until done, the
median of its images/s after warm-up.
"""
from __future__ import annotations

import json
import resource
import statistics
import time

import jax
import numpy as np

from bnjax.data.batches import train_batches
from bnjax.data.dataset import Dataset
from bnjax.engine import make_engine
from bnjax.models import parse_name
from bnjax.timetable import Timetable
from bnjax.state import initialize
from bnjax.step import make_mesh, shard_batch
from bnjax.run import Run


def _median_rate(step, batch: int, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first call, i.e. compile + run; median images/s after warm-up)."""
    start = time.perf_counter()
    jax.block_until_ready(step())
    first = time.perf_counter() - start
    rates = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        jax.block_until_ready(step())
        if index >= warmup:
            rates.append(batch / (time.perf_counter() - start))
    return first, statistics.median(rates)


def _device_memory_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def _replica_configs(config, replicas: int, same_seed: bool) -> list:
    """K configs as a sweep would group them: lr doubling from the config's, and seeds 0..K-1
    when not the same seed."""
    configs = []
    for index in range(replicas):
        replica = config.copy_and_resolve_references()
        replica.train.lr = config.train.lr * 2 ** index if replicas > 1 else config.train.lr
        replica.seed = config.seed if same_seed else config.seed + index
        configs.append(replica)
    return configs


def run_bench(config, warmup: int = 3, steps: int = 20, replicas: int = 1,
              same_seed: bool = True, layout: str = "auto") -> dict:
    """Images/s of the program training would compile: one run, or `replicas` runs as one
    program (images/s then counts every replica's images)."""
    spec = parse_name(config.model.name)
    image_shape = (spec.image_size, spec.image_size, 3)
    batch, eval_batch = config.train.batch_size, config.eval.batch_size
    per_call = config.train.steps_per_call
    # enough images for the batches timed here, not a whole dataset (ImageNet's would be GBs)
    count = max(batch * per_call * (1 if same_seed else replicas), eval_batch, batch) + batch
    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 256, (count,) + image_shape, dtype=np.uint8),
                   rng.integers(0, 10, count).astype(np.int32), tuple(range(10)))
    runs, states = [], []
    for replica in _replica_configs(config, replicas, same_seed):
        setup, state = initialize(replica, 10, image_shape, steps_per_epoch=count // batch)
        runs.append(Run(replica, setup, data, data, Timetable.from_config(replica, count // batch)))
        states.append(state)
    mesh = make_mesh()
    engine = make_engine(runs, mesh, layout)
    holder = {"state": engine.place(states)}
    own_batches = 1 if same_seed or replicas == 1 else replicas
    shape = ((per_call,) if per_call > 1 else ()) + ((own_batches,) if own_batches > 1 else ())
    size = batch * per_call * own_batches
    leading = len(shape)
    images, targets = shard_batch((data.images[:size].reshape(shape + (batch,) + image_shape),
                                   data.labels[:size].reshape(shape + (batch,))), mesh, leading)
    call_steps = list(range(per_call))

    def one_train_call():
        holder["state"], metrics = engine.run_call(holder["state"], call_steps, images, targets)
        return metrics

    # at least five timed calls: a median of fewer swings with one slow call on a busy host
    calls = max(-(-steps // per_call), 5)
    images_per_call = batch * per_call * replicas
    compile_s, train_rate = _median_rate(one_train_call, images_per_call, warmup, calls)
    # As the training loop runs: calls dispatched back to back, one wait at the end, so the
    # host's work for the next call overlaps the current one.
    start = time.perf_counter()
    jax.block_until_ready([one_train_call() for _ in range(calls)])
    pipelined_rate = calls * images_per_call / (time.perf_counter() - start)

    eval_inputs = shard_batch((data.images[:eval_batch], data.labels[:eval_batch],
                               np.ones(eval_batch, np.float32)), mesh)
    state = holder["state"]
    eval_compile_s, eval_rate = _median_rate(
        lambda: engine.eval_batch(state, *eval_inputs), eval_batch * replicas, warmup,
        max(steps // 2, 5))

    # The host side of feeding: choosing, gathering and placing batches (what the loop does).
    fed = 200
    start = time.perf_counter()
    for _, batch_images, batch_targets in train_batches(data, batch, config.seed, 0, fed):
        placed = shard_batch((batch_images, batch_targets), mesh)
    jax.block_until_ready(placed)
    input_rate = fed * batch / (time.perf_counter() - start)

    return {"model": config.model.name, "norm": config.model.norm, "mode": config.train.mode,
            "batch": batch, "steps_per_call": per_call, "replicas": replicas,
            "replica_seeds": "same" if same_seed else "different",
            "replica_layout": getattr(engine, "layout", None),
            "eval_batch": eval_batch, "dtype": config.model.dtype,
            "backend": jax.default_backend(), "device_count": jax.device_count(),
            "device": str(jax.devices()[0].device_kind),
            "trainable_params": runs[0].setup.trainable_params,
            "total_params": runs[0].setup.total_params,
            "compile_s": compile_s, "eval_compile_s": eval_compile_s,
            "train_images_per_s": train_rate, "train_images_per_s_pipelined": pipelined_rate,
            "eval_images_per_s": eval_rate,
            "input_images_per_s": input_rate,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mb": _device_memory_mb()}


def render(result: dict) -> str:
    setting = f"{result['norm']}, {result['mode']}, {result['dtype']}"
    rows = [("model", f"{result['model']} ({setting})"),
            ("backend", f"{result['backend']} x{result['device_count']} ({result['device']})"),
            ("compile (first train step)", f"{result['compile_s']:.1f} s"),
            (f"train step, batch {result['batch']}"
             + (f", {result['steps_per_call']} per call" if result["steps_per_call"] > 1 else "")
             + (f", {result['replicas']} replicas, "
                + ("one seed" if result["replica_seeds"] == "same" else "a seed each")
                + f", {result['replica_layout']}"
                if result["replicas"] > 1 else ""),
             f"{result['train_images_per_s']:.0f} img/s"
             + (" in all" if result["replicas"] > 1 else "")),
            ("train steps back to back", f"{result['train_images_per_s_pipelined']:.0f} img/s"),
            (f"eval, batch {result['eval_batch']}", f"{result['eval_images_per_s']:.0f} img/s"),
            ("input pipeline (host)", f"{result['input_images_per_s']:.0f} img/s"),
            ("peak host memory", f"{result['peak_rss_mb']:.0f} MB"),
            ("peak device memory", "n/a" if result["device_peak_mb"] is None
             else f"{result['device_peak_mb']:.0f} MB")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n" + \
        json.dumps(result)
