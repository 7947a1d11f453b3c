"""Random keys per example, so a stochastic task gives the same result on any number of devices.

A step's randomness is keyed by each example's position in the global batch, never by the device: with
per-device keys, 1 and 4 devices would draw different noise for the same example and train different
parameters. `example_keys` is called inside per-device code (it reads the device's position on the
mapped axis); tasks draw from the keys row by row with `jax.vmap`, e.g. `normal(keys, mu.shape)`.
Functions here also take a single key (tools that sample outside the trainer), and then draw as
`jax.random` does.
"""

import zlib

import jax
import jax.numpy as jnp
from jax import lax

from mmlearn.parallel import AXIS


def example_keys(key: jax.Array, local_size: int, axis: str = AXIS) -> jax.Array:
  """[local_size] keys, row i being `fold_in(key, global index of this device's example i)`."""
  start = lax.axis_index(axis) * local_size
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(local_size))


def stream_key(key: jax.Array, name: str) -> jax.Array:
  """An independent key for the named stream (`"dropout"`), the same for a name on every run."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def device_key(key: jax.Array, axis: str = AXIS) -> jax.Array:
  """`key` folded with this device's position on the mapped axis, inside per-device code.

  For layers that draw over the whole local batch at once (dropout): their masks then depend on how
  the batch is split, so runs on different device counts agree in distribution, not bit for bit.
  """
  return jax.random.fold_in(key, lax.axis_index(axis))


def is_batched(keys: jax.Array) -> bool:
  """Whether `keys` is one key per row (raw uint32 [B, 2] or typed [B]) rather than a single key."""
  single_ndim = 0 if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else 1
  return keys.ndim > single_ndim


def split(keys: jax.Array, num: int) -> list[jax.Array]:
  """`num` independent keys (or key rows), like `jax.random.split`, for single or per-example keys."""
  if not is_batched(keys):
    return list(jax.random.split(keys, num))
  stacked = jax.vmap(lambda k: jax.random.split(k, num))(keys)  # [B, num, ...]
  return [stacked[:, i] for i in range(num)]


def fold_in(keys: jax.Array, data: int) -> jax.Array:
  return (
    jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)
    if is_batched(keys)
    else jax.random.fold_in(keys, data)
  )


def normal(keys: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Standard normal draws of `shape`; with per-example keys, row i of the leading axis from key i."""
  if not is_batched(keys):
    return jax.random.normal(keys, shape, dtype)
  if shape[0] != keys.shape[0]:
    raise ValueError(f"{keys.shape[0]} example keys for {shape[0]} rows")
  return jax.vmap(lambda k: jax.random.normal(k, shape[1:], dtype))(keys)


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
  """Category draws over the last axis of `logits`; with per-example keys, row i from key i."""
  if not is_batched(keys):
    return jax.random.categorical(keys, logits)
  if logits.shape[0] != keys.shape[0]:
    raise ValueError(f"{keys.shape[0]} example keys for {logits.shape[0]} rows")
  return jax.vmap(jax.random.categorical)(keys, logits)


def per_sample(keys: jax.Array, num: int) -> jax.Array:
  """Per-example keys [B] -> [B * num]: each example's key split into `num`, in example-major order.

  For drawing `num` samples per example (rows repeated with `jnp.repeat(x, num, axis=0)`), each from its
  own key. A single key is returned as it is (it draws every row anyway).
  """
  if not is_batched(keys):
    return keys
  split_keys = jax.vmap(lambda k: jax.random.split(k, num))(keys)  # [B, num, ...]
  return split_keys.reshape(-1, *split_keys.shape[2:])
