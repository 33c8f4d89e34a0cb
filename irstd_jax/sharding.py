"""Device mesh and data placement for data-parallel training with `jax.jit`.

One 1-D mesh with axis 'data' over all devices of all hosts: batches are
split along it, the training state is replicated. No pmap.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

DATA_AXIS = 'data'


def create_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named 'data' over `devices` (default: all devices, all hosts).

  Auto axis types let XLA choose the collectives, so the models need no
  sharding annotations.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def stacked_batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Batches of stacked seeds (seeds, batch, ...): each seed's batch split over 'data'."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, DATA_AXIS))


def global_array(array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host array that every process holds in full.

  Used for evaluation batches, which every host reads whole; each device
  takes its slice.
  """
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def pad_batch(batch: dict[str, Any], multiple: int) -> dict[str, Any]:
  """Pads the batch axis with zeros (invalid images) to a multiple of `multiple`."""
  size = len(next(iter(batch.values())))
  extra = -size % multiple
  if not extra:
    return batch
  return {key: np.concatenate([np.asarray(value),
                               np.zeros((extra,) + np.shape(value)[1:],
                                        np.asarray(value).dtype)])
          for key, value in batch.items()}


def to_host(tree: Any) -> Any:
  """Numpy copies of the leaves; replicated arrays of a multi-host run too.

  `jax.device_get` refuses arrays that span other hosts' devices; a
  replicated one has a full copy on this host's devices.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError('to_host needs a replicated array in a multi-host run; '
                         f'got sharding {x.sharding}.')
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when launched as one of several processes.

  By hand: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES
  and JAX_PROCESS_ID in every process. SLURM (srun with several tasks) and
  Open MPI (mpirun) environments are detected by JAX itself.

  Returns:
    Whether it initialised (False: a single process).
  """
  env = os.environ
  if 'JAX_COORDINATOR_ADDRESS' in env or 'JAX_NUM_PROCESSES' in env:
    missing = [k for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
               if k not in env]
    if missing:
      raise ValueError(f'A multi-process launch needs {", ".join(missing)} too: set '
                       'JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and '
                       'JAX_PROCESS_ID=0..N-1 in every process.')
    jax.distributed.initialize(env['JAX_COORDINATOR_ADDRESS'],
                               num_processes=int(env['JAX_NUM_PROCESSES']),
                               process_id=int(env['JAX_PROCESS_ID']))
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1 or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    jax.distributed.initialize()
    return True
  return False
