"""Exact counters in int32 (jax has no int64 unless x64 is enabled).

A count is stored as two int32 words, value = high * 2**20 + low. `add` keeps
`low` below 2**20, so any 2048 normalized counters can still be summed with a
plain tree-map add (psum across devices, sum across hosts) without overflow,
and totals stay exact up to 2**51.
"""

import jax.numpy as jnp
import numpy as np

_BITS = 20
_LOW_MASK = (1 << _BITS) - 1


def zeros(shape=()) -> jnp.ndarray:
  return jnp.zeros(tuple(shape) + (2,), jnp.int32)


def normalize(counter: jnp.ndarray) -> jnp.ndarray:
  high, low = counter[..., 0], counter[..., 1]
  return jnp.stack([high + (low >> _BITS), low & _LOW_MASK], axis=-1)


def add(counter: jnp.ndarray, value) -> jnp.ndarray:
  """Adds a non-negative int32 `value` (shape counter.shape[:-1])."""
  value = jnp.asarray(value, jnp.int32)
  low = counter[..., 1] + (value & _LOW_MASK)
  high = counter[..., 0] + (value >> _BITS)
  return normalize(jnp.stack([high, low], axis=-1))


def to_int(counter) -> np.ndarray:
  """The exact value(s) as int64 on the host."""
  counter = np.asarray(counter, np.int64)
  return counter[..., 0] * (1 << _BITS) + counter[..., 1]
