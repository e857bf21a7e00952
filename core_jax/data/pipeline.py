"""Deterministic, resumable grain pipelines: global shuffle, per-record augmentation, process shards.

Train stream layout: global position `pos` -> (epoch, i) = divmod(pos, steps_per_epoch * B);
record = source[perm_epoch(i)], augmented with an rng seeded by (seed, pos). Everything is a pure
function of `pos`, so sharding by process only decides who computes which record. Process p of P owns
the contiguous slice [p*L, (p+1)*L) of every global batch (L = B/P), so the global array assembled from
the local batches holds the same examples in the same order as a 1-process batch: per-position
randomness (drop-path masks) matches too, and the iterator state is tiny.

Eval batches are padded to equal counts per process with examples whose `mask` is False; their label maps
(`segmentation`, and a spatial `label`) are IGNORE_LABEL (255), everything else 0.
"""

from __future__ import annotations

import math
import os
from typing import Any

import grain
import numpy as np

from core_jax.data.ops import build_transforms
from core_jax.data.registry import IGNORE_LABEL, LABEL_MAP_KEY, Transform
from core_jax.errors import UserError

_SHUFFLE_TAG, _AUGMENT_TAG, _EVAL_TAG = 0, 1, 2


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch; the remainder of each epoch's permutation is dropped."""
  return num_examples // global_batch_size


def _as_transform(transforms) -> Transform:
  if transforms is None:
    return lambda ex, rng: dict(ex)
  if callable(transforms):
    return transforms
  return build_transforms(list(transforms))


def _finalize(example: dict) -> dict:
  """numpy leaves with device-friendly dtypes: int64 -> int32, float64 -> float32 (x64 is off)."""
  out = {}
  for k, v in example.items():
    v = np.asarray(v)
    if v.dtype == np.int64 or v.dtype == np.uint64:
      v = v.astype(np.int32)
    elif v.dtype == np.float64:
      v = v.astype(np.float32)
    out[k] = v
  return out


class _TrainRecord:
  """pos -> augmented example. A picklable class (not a closure) so mp_prefetch workers can use it."""

  def __init__(self, source, transform: Transform, seed: int, per_epoch: int):
    self.source, self.transform, self.seed, self.per_epoch = source, transform, seed, per_epoch
    self.n = len(source)
    self._perms: dict[int, np.ndarray] = {}

  def __getstate__(self):
    return {**self.__dict__, '_perms': {}}  # don't ship cached permutations to workers

  def _perm(self, epoch: int) -> np.ndarray:
    # A cached numpy permutation per epoch, rather than grain's index_shuffle (which costs milliseconds
    # per call for small datasets). Seeded by hash(seed, epoch), unlike grain's seed + epoch, so
    # runs with nearby seeds don't share epochs.
    perms = self._perms  # never mutated, only replaced: safe under grain's reader threads
    perm = perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng((self.seed, _SHUFFLE_TAG, epoch)).permutation(self.n)
      # Keep the neighbour epoch too: reader threads straddle epoch boundaries.
      self._perms = {**{e: p for e, p in perms.items() if abs(e - epoch) == 1}, epoch: perm}
    return perm

  def __call__(self, pos: int, _value: Any = None) -> dict:
    epoch, i = divmod(int(pos), self.per_epoch)
    idx = int(self._perm(epoch)[i])
    rng = np.random.default_rng((self.seed, _AUGMENT_TAG, int(pos)))
    return _finalize(self.transform(self.source[idx], rng))


def make_train_dataset(
    source,
    *,
    transforms,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None = None,
) -> grain.MapDataset:
  """Process-local, unbatched record stream behind `make_train_iterator`."""
  if global_batch_size % process_count:
    raise UserError(f'global batch size {global_batch_size} is not divisible by the ' f'{process_count} processes')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  steps = steps_per_epoch(len(source), global_batch_size)
  if steps == 0:
    raise UserError(f'dataset has {len(source)} examples, fewer than one global batch ' f'of {global_batch_size}')
  per_epoch = steps * global_batch_size
  local_batch = global_batch_size // process_count
  local_positions = grain.MapDataset.range(steps * local_batch)
  # reseed_each_epoch=False: positions are plain ints; the epoch reshuffle is ours (_TrainRecord).
  local_positions = local_positions.repeat(num_epochs, reseed_each_epoch=False)
  record = _TrainRecord(source, _as_transform(transforms), seed, per_epoch)
  return local_positions.map_with_index(_ProcessSlice(record, global_batch_size, local_batch, process_index))


class _ProcessSlice:
  """Local position j -> the global position this process owns: its slice of global batch j // L."""

  def __init__(self, record: _TrainRecord, global_batch: int, local_batch: int, process_index: int):
    self.record, self.global_batch, self.local_batch = record, global_batch, local_batch
    self.offset = process_index * local_batch

  def __call__(self, j: int, _value: Any = None) -> dict:
    step, r = divmod(int(j), self.local_batch)
    return self.record(step * self.global_batch + self.offset + r)


# Records made on the calling thread, no reader threads or prefetch buffer (see core_jax.train.build_data).
SYNCHRONOUS_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def make_train_iterator(
    source,
    *,
    transforms,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
  """Infinite (or `num_epochs`) iterator of local batches: dict of stacked numpy arrays.

  Checkpoint with `it.get_state()` / `it.set_state(state)`, or in orbax with
  `grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)`.
  `worker_count > 0` uses grain multiprocessing (needs absl flags parsed and a __main__ guard).
  """
  ds = make_train_dataset(
      source,
      transforms=transforms,
      global_batch_size=global_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      num_epochs=num_epochs,
  )
  # Prefetch records, then batch: ReadOptions.prefetch_buffer_size (default 500) counts elements,
  # and 500 prefetched *batches* of large images would not fit in host memory.
  if read_options is None:
    # grain's default of 16 reader threads thrashes small hosts (benchmarks/ANALYSIS.md, design measurements).
    # Two local batches of records, at most grain's 500: every record taken scans the buffer's ready prefix
    # (grain's prefetch-depth statistic, a lock per future), so a full 500 buffer costs the main thread about as
    # much as making the records on small examples (digits at batch 64: 50 -> 26 ms of CPU per batch).
    buffer = min(500, max(16, 2 * (global_batch_size // process_count)))
    read_options = grain.ReadOptions(num_threads=min(16, os.cpu_count() or 1), prefetch_buffer_size=buffer)
  ds = ds.to_iter_dataset(read_options)
  if worker_count > 0:
    # Before batching: mp_prefetch gives worker w the records w::W and interleaves them back in
    # order; batching inside workers would instead make each batch come from a single worker's
    # slice, changing batch contents versus worker_count=0 and breaking the sharding invariant.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(ds.batch(global_batch_size // process_count, drop_remainder=True))


def _padding_like(key: str, value: np.ndarray) -> np.ndarray:
  """A padded example's feature: label maps hold IGNORE_LABEL (never a real class), other features 0."""
  if key == LABEL_MAP_KEY or (key == 'label' and value.ndim >= 2):
    return np.full_like(value, IGNORE_LABEL)
  return np.zeros_like(value)


class _EvalRecord:

  def __init__(self, source, transform: Transform, process_index: int, process_count: int):
    self.source, self.transform = source, transform
    self.process_index, self.process_count = process_index, process_count
    self.n = len(source)
    template = self._load(0)
    self.padding = {k: _padding_like(k, v) for k, v in template.items()}
    self.padding['mask'] = np.asarray(False)

  def _load(self, idx: int) -> dict:
    rng = np.random.default_rng((_EVAL_TAG, idx))  # eval ops are usually deterministic anyway
    ex = _finalize(self.transform(self.source[idx], rng))
    ex['mask'] = np.asarray(True)
    return ex

  def __call__(self, j: int) -> dict:
    idx = self.process_index + int(j) * self.process_count
    return self._load(idx) if idx < self.n else dict(self.padding)


def make_eval_batches(
    source, *, transforms, global_batch_size: int, process_index: int, process_count: int
) -> grain.MapDataset:
  """Local eval batches with a bool `mask`; padded so every process yields the same count.

  Process p takes examples p, p + P, ...; the result supports len() (number of batches),
  indexing and iteration (or `.to_iter_dataset()` for threaded prefetch).
  """
  if global_batch_size % process_count:
    raise UserError(f'global batch size {global_batch_size} is not divisible by the ' f'{process_count} processes')
  n = len(source)
  if n == 0:
    raise UserError('eval split is empty')
  local = global_batch_size // process_count
  num_batches = math.ceil(math.ceil(n / process_count) / local)
  record = _EvalRecord(source, _as_transform(transforms), process_index, process_count)
  return grain.MapDataset.range(num_batches * local).map(record).batch(local)


def to_global(local_batch: dict, sharding) -> dict:
  """Process-local numpy batch -> global jax.Arrays (batch axis sharded as `sharding` says).

  `sharding`: a jax Sharding for every leaf (e.g. NamedSharding(mesh, P('data'))), or a
  function leaf -> Sharding.
  """
  import jax

  get = sharding if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding) else (lambda _: sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(get(x), np.asarray(x)), local_batch)
