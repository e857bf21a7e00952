"""Devices: multi-process start-up, the one `Mesh`, and the shardings of state and batches.

One mesh with axes ('data', 'fsdp'). Batches are split over both axes (every device sees a different slice);
parameters and optimizer state are replicated, except that with fsdp > 1 large leaves are split along their
largest dimension that the fsdp axis divides. Shardings are a function of a leaf's shape only, so the
optimizer moments get the sharding of the parameter they mirror without any bookkeeping.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core_jax.errors import UserError

DATA_AXES = ('data', 'fsdp')


def initialize_distributed(config) -> None:
  """Starts `jax.distributed` when the config or the environment names a coordinator; once per process, so a
  driver may call `train.run` several times in one multi-process job (later calls keep the first setup).

  Environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (what a launcher sets); on
  TPU pods and SLURM, `config.distributed.auto=True` lets JAX discover them.
  """
  if jax.distributed.is_initialized():
    return
  dist = config.get('distributed', {})
  address = dist.get('coordinator_address') or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if address:
    num = dist.get('num_processes') or os.environ.get('JAX_NUM_PROCESSES')
    pid = dist.get('process_id', -1)
    if pid is None or pid < 0:  # -1 in configs means "from the environment"
      pid = os.environ.get('JAX_PROCESS_ID')
    if num is None or pid is None:
      raise UserError(
          'a coordinator address needs num_processes and process_id ' '(JAX_NUM_PROCESSES / JAX_PROCESS_ID)'
      )
    jax.distributed.initialize(coordinator_address=address, num_processes=int(num), process_id=int(pid))
  elif dist.get('auto', False):
    jax.distributed.initialize()


def make_mesh(config) -> Mesh:
  fsdp = int(config.get('mesh', {}).get('fsdp', 1))
  devices = np.asarray(jax.devices())
  if devices.size % fsdp:
    raise UserError(f'mesh.fsdp={fsdp} does not divide the {devices.size} devices')
  return Mesh(devices.reshape(devices.size // fsdp, fsdp), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_sharding(mesh: Mesh, shape, min_fsdp_bytes: int = 2**20, itemsize: int = 4) -> NamedSharding:
  """Replicated, or split along the largest fsdp-divisible dimension when the leaf is large."""
  fsdp = mesh.shape['fsdp']
  size = int(np.prod(shape)) * itemsize if shape else 0
  if fsdp == 1 or size < min_fsdp_bytes:
    return replicated(mesh)
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(mesh: Mesh, abstract_state):
  """Shardings for a pytree of `jax.ShapeDtypeStruct` (the output of `jax.eval_shape`)."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, x.shape, itemsize=x.dtype.itemsize), abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = 'batch_size') -> None:
  if global_batch_size <= 0:
    raise UserError(f'{key} must be a positive number of examples, got {global_batch_size}')
  # the key named: batch_size and eval_batch_size are both global batches, and either can be the one that fails
  if global_batch_size % mesh.devices.size:
    raise UserError(f'{key} {global_batch_size} (a global batch) is not divisible by the {mesh.devices.size} devices')
  if global_batch_size % jax.process_count():
    raise UserError(
        f'{key} {global_batch_size} (a global batch) is not divisible by the {jax.process_count()} processes'
    )
