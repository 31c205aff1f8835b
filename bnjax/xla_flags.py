"""XLA:CPU settings that make bnjax's steps faster, added to XLA_FLAGS before JAX starts a backend.

Measured on the 2-core development machine (cifar_resnet_20, batch 128, docs/PERFORMANCE.md):
- YNNPACK's convolutions run slower than XLA's own (Eigen) convolutions for these shapes (for
  example 5.4 vs 3.6 ms for 128x16x16x32 -> 32, 3x3); turning them off took the BN-only gradient
  from ~340 to ~281 ms and the full one from ~838 to ~560 ms.
- The concurrency-optimized scheduler interleaves independent ops on threads that compete for
  the same core here; without it the BN-only gradient was a few percent faster (~300 -> ~274 ms
  in one A/B).
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
