"""Random numbers that are the same bits on every machine: what a seed regenerates.

The frozen weights and the random_k masks must come out of their seed bit for bit on any CPU,
vector width, accelerator and library version, for as long as an export file is kept. Two rules
make that so, and neither depends on a random number library or on a compiler:

- Bits: SHAKE-256 (FIPS 202, Python's hashlib) of b"bnjax-seeded-v2|<purpose>|<seed>|<path>",
  read as little-endian unsigned 64-bit words. Each leaf has its own stream, named by its path in
  the parameter tree, so adding a layer changes no other layer's numbers.
- Floats: integers converted exactly, then only IEEE-754 float64 add, subtract, multiply, divide
  and square root, each its own numpy operation (so nothing can be contracted into a fused
  multiply-add or reordered), then one cast to float32. IEEE-754 requires these operations to be
  correctly rounded, so every conforming machine computes the same bits. No math-library
  function is used: the normal quantile's logarithm is computed here from frexp (exact) and a
  fixed polynomial.

Results never pass through subnormal numbers, so a flush-to-zero setting cannot change them.
"""
from __future__ import annotations

import hashlib

import numpy as np

VERSION = "bnjax-seeded-v2"
_CHUNK = 1 << 20  # elements per float pass: bounds temporary memory for the largest kernels


def words(seed: int, purpose: str, path: str, count: int) -> np.ndarray:
    """`count` uint64 words of the stream named by (seed, purpose, path)."""
    name = f"{VERSION}|{purpose}|{int(seed)}|{path}".encode()
    return np.frombuffer(hashlib.shake_256(name).digest(8 * count), dtype="<u8").astype(np.uint64)


def _chunked(function, values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape, np.float64)
    for start in range(0, values.size, _CHUNK):
        out[start:start + _CHUNK] = function(values[start:start + _CHUNK])
    return out


def uniform(seed: int, purpose: str, path: str, shape, low: float, high: float) -> np.ndarray:
    """float32 U[low, high): low + (high - low) * u with u on the 2^-24 grid of [0, 1)."""
    count = int(np.prod(shape, dtype=np.int64))
    u = (words(seed, purpose, path, count) >> np.uint64(40)).astype(np.float64) * 2.0 ** -24
    values = np.float64(low) + (np.float64(high) - np.float64(low)) * u
    return values.astype(np.float32).reshape(shape)


def normal(seed: int, purpose: str, path: str, shape, std: float) -> np.ndarray:
    """float32 N(0, std^2): the normal quantile of u = (k + 1/2) 2^-52, k of 52 random bits."""
    count = int(np.prod(shape, dtype=np.int64))
    k = words(seed, purpose, path, count) >> np.uint64(12)
    u = (k.astype(np.float64) + 0.5) * 2.0 ** -52  # exact: k + 1/2 needs 53 bits
    z = _chunked(normal_quantile, u)
    return (z * np.float64(std)).astype(np.float32).reshape(shape)


def scores(seed: int, purpose: str, path: str, shape) -> np.ndarray:
    """uint64 random integers of `shape`: sort keys for choices without floats."""
    count = int(np.prod(shape, dtype=np.int64))
    return words(seed, purpose, path, count).reshape(shape)


def _horner(coefficients, x):
    """coefficients[0] x^n + ... + coefficients[n], one rounded multiply and add per step."""
    result = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        result = result * x + c
    return result


_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476


def log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float64s, to ~1e-16, from IEEE basic operations only.

    x = m 2^e exactly (frexp), with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1),
    |s| < 0.172, from 12 terms of its odd series (the 13th is below 1e-19 of the sum).
    """
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    series = _horner([1.0 / (2 * i + 1) for i in reversed(range(12))], s * s)
    return e * _LN2 + 2.0 * s * series


# Wichura (1988), Algorithm AS 241 (PPND16): the normal quantile to ~1e-16 relative error, as in
# Python's statistics.NormalDist.inv_cdf. Numerator and denominator coefficients, highest first.
_CENTRAL = ([2.5090809287301226727e+3, 3.3430575583588128105e+4, 6.7265770927008700853e+4,
             4.5921953931549871457e+4, 1.3731693765509461125e+4, 1.9715909503065514427e+3,
             1.3314166789178437745e+2, 3.3871328727963666080e+0],
            [5.2264952788528545610e+3, 2.8729085735721942674e+4, 3.9307895800092710610e+4,
             2.1213794301586595867e+4, 5.3941960214247511077e+3, 6.8718700749205790830e+2,
             4.2313330701600911252e+1, 1.0])
_INNER_TAIL = ([7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1,
                1.27045825245236838258e+0, 3.64784832476320460504e+0, 5.76949722146069140550e+0,
                4.63033784615654529590e+0, 1.42343711074968357734e+0],
               [1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2,
                1.48103976427480074590e-1, 6.89767334985100004550e-1, 1.67638483018380384940e+0,
                2.05319162663775882187e+0, 1.0])
_OUTER_TAIL = ([2.01033439929228813265e-7, 2.71155556874348757815e-5, 1.24266094738807843860e-3,
                2.65321895265761230930e-2, 2.96560571828504891230e-1, 1.78482653991729133580e+0,
                5.46378491116411436990e+0, 6.65790464350110377720e+0],
               [2.04426310338993978564e-15, 1.42151175831644588870e-7, 1.84631831751005468180e-5,
                7.86869131145613259100e-4, 1.48753612908506148525e-2, 1.36929880922735805310e-1,
                5.99832206555887937690e-1, 1.0])


def _rational(coefficients, x):
    numerator, denominator = coefficients
    return _horner(numerator, x) / _horner(denominator, x)


def normal_quantile(p: np.ndarray) -> np.ndarray:
    """The standard normal quantile of float64 p in (0, 1), by AS 241."""
    q = p - 0.5
    z = np.empty_like(p)
    central = np.abs(q) <= 0.425
    qc = q[central]
    z[central] = qc * _rational(_CENTRAL, 0.180625 - qc * qc)
    qt, pt = q[~central], p[~central]
    r = np.sqrt(-log(np.where(qt < 0.0, pt, 1.0 - pt)))  # 1 - p is exact for p >= 1/2
    tail = np.where(r <= 5.0, _rational(_INNER_TAIL, r - 1.6), _rational(_OUTER_TAIL, r - 5.0))
    z[~central] = np.where(qt < 0.0, -tail, tail)
    return z
