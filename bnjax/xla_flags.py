"""XLA:CPU settings that make bnjax's steps faster, added to XLA_FLAGS before JAX starts a backend.

bnjax's commands apply them (bnjax.cli); importing bnjax does not. A library user who wants them
calls `apply_defaults()` before the first JAX computation. The measurements behind each are in
docs/PERFORMANCE.md:
- YNNPACK's convolutions: slower than XLA's own (Eigen) convolutions for the CIFAR ResNets'
  shapes, and no more accurate there (docs/PERFORMANCE.md, "Gradient accuracy").
- The concurrency-optimized scheduler: it interleaves independent ops on threads that compete
  for the same cores.
Both flags concern the CPU backend only; GPU and TPU runs are unaffected. A flag the user already
put in XLA_FLAGS is left as the user set it.
"""
from __future__ import annotations

import os

CPU_DEFAULTS = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
    "xla_cpu_enable_concurrency_optimized_scheduler": "false",
}


def with_defaults(xla_flags: str) -> str:
    """xla_flags plus every default whose flag it does not set already."""
    present = {item.lstrip("-").split("=", 1)[0] for item in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in CPU_DEFAULTS.items() if name not in present]
    return " ".join([xla_flags.strip()] + added).strip()


def apply_defaults(environ=os.environ) -> None:
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
