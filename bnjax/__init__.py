"""bnjax: training BatchNorm and only BatchNorm, in JAX/Flax.

Importing bnjax changes nothing in the process. bnjax's own commands set XLA:CPU options that
make its steps faster (bnjax.xla_flags); a library user who wants the same calls
`bnjax.xla_flags.apply_defaults()` before JAX starts a backend.
"""

__version__ = "0.7.1"  # the one place it is written: pyproject.toml reads it from here
