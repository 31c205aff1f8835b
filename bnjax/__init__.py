"""bnjax: training BatchNorm and only BatchNorm, in JAX/Flax."""
from bnjax.xla_flags import apply_defaults as _apply_xla_defaults

# Before any JAX backend exists: XLA reads XLA_FLAGS once, when it starts.
_apply_xla_defaults()
