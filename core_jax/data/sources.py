"""Random-access dataset sources: TFDS builders read through ArrayRecord (`as_data_source`).

`load_source(name, split)` -> (source, DatasetInfo). `DatasetInfo.num_classes` is the ClassLabel count of a
classification dataset's 'label', or for a segmentation dataset the `NUM_CLASSES` of its module
(`SEGMENTATION_MODULES`: digit_scenes 11, cityscapes 19), the one place each count is written.
Cityscapes records come out as {'image', 'segmentation' (trainIds)} (core_jax.data.cityscapes).
ADE20K is read from its release folder, not TFDS ('ade20k' or 'ade20k:/path', core_jax.data.ade20k), its labels
reduced (0 -> 255, 1..150 -> 0..149).
Every source comes wrapped in `CheckedSource`: a record that does not read or decode ends the run with one line naming
the split, the shard file and the record, never a skipped or half-read example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import operator
import os
import re
import sys
from typing import Any

import numpy as np

import core_jax.data.embedded  # noqa: F401  (tfds compat shim)
from core_jax.data.registry import LABEL_MAP_KEY
from core_jax.errors import UserError

# Embedded builders: generated offline on first use. Values are 'module:Class' so that importing
# this module does not import TFDS (slow) until a dataset is actually loaded.
EMBEDDED = {
    'digits': ('core_jax.data.embedded.digits', 'Digits'),
    'digit_scenes': ('core_jax.data.embedded.digit_scenes', 'DigitScenes'),
}
# Segmentation datasets: the module whose NUM_CLASSES is the class count (no ClassLabel feature to read it from).
SEGMENTATION_MODULES = {
    'digit_scenes': 'core_jax.data.embedded.digit_scenes',
    'cityscapes': 'core_jax.data.cityscapes',
    'ade20k': 'core_jax.data.ade20k',
}
# Files a manual-download dataset needs in its manual dir, per (dataset, TFDS config; '' = the default config).
# Others fall back to TFDS' own instructions.
_MANUAL_FILES = {
    ('cityscapes', ''): ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip'),
    ('cityscapes', 'semantic_segmentation'): ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip'),
    ('cityscapes', 'semantic_segmentation_extra'): (
        'leftImg8bit_trainvaltest.zip',
        'leftImg8bit_trainextra.zip',
        'gtCoarse.zip',
    ),
    ('imagenet2012', ''): ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'),
}


@dataclasses.dataclass(frozen=True)
class Shard:
  """The part of one shard file a split reads: the split's records [start, start + count) are the file's records
  [skip, skip + count)."""

  filename: str
  start: int
  skip: int
  count: int


def split_shards(tfds_source) -> tuple[Shard, ...]:
  """The shard files behind a TFDS data source, in the split's record order (its file instructions)."""
  from tensorflow_datasets.core.data_sources import base  # pylint: disable=import-outside-toplevel

  shards, start = [], 0
  for fi in base.file_instructions(tfds_source.dataset_info, tfds_source.split):
    shards.append(Shard(filename=os.fspath(fi.filename), start=start, skip=int(fi.skip), count=int(fi.take)))
    start += int(fi.take)
  return tuple(shards)


class CheckedSource:
  """A random-access source whose records are checked as they are read (picklable for grain's workers).

  A record that raises while it is read or decoded (a truncated or corrupt ArrayRecord shard, an image that does
  not decode), or whose label map is not of its image's height and width, is a UserError naming the dataset, the
  split, the record's index in the split and its shard file and index there: the run stops on it rather than
  training on, or evaluating without, an example it cannot read."""

  def __init__(self, source, name: str, split: str, shards: tuple[Shard, ...] = ()):
    self.source, self.name, self.split, self.shards = source, name, split, shards
    self.length = len(source)

  def __len__(self) -> int:
    return self.length

  def where(self, index: int) -> str:
    """'dataset 'digits' split 'test': record 17 (record 17 of shard /data/digits-test.array_record-00000-of-00001)'"""
    place = f'dataset {self.name!r} split {self.split!r}: record {index}'
    for shard in self.shards:
      if shard.start <= index < shard.start + shard.count:
        return f'{place} (record {shard.skip + index - shard.start} of shard {shard.filename})'
    return place

  def __getitem__(self, index):
    index = operator.index(index)
    if not 0 <= index < self.length:
      raise IndexError(f'record {index} is not in [0, {self.length})')
    try:
      example = self.source[index]
    except Exception as e:  # array_record, protobuf, PIL and TF raise assorted types for unreadable bytes
      raise UserError(f'{self.where(index)} cannot be read ({type(e).__name__}: {_one_line(str(e), 200)})') from None
    image, label_map = example.get('image'), example.get(LABEL_MAP_KEY)
    if image is not None and label_map is not None and tuple(label_map.shape[:2]) != tuple(image.shape[:2]):
      raise UserError(
          f'{self.where(index)}: its {LABEL_MAP_KEY} label map is {tuple(label_map.shape)}, not the height and width '
          f'of its image {tuple(image.shape)}'
      )
    return example


class DecodedOnce:
  """A source whose records are read and decoded once per process and kept (the embedded datasets: digits'
  1,437 train records decode to 4 MB): an epoch reads each record again, and the digits demos read the split
  dozens of times (the slimming experiment 50,000 reads, each ~60 us of TFDS deserializing and PNG decoding). A
  read returns a new dict of copies, so a transform that changes its example never changes the kept record.
  Grain's worker processes get the source without the records (each keeps its own)."""

  def __init__(self, source):
    self.source = source
    self._records: dict[int, dict] = {}

  def __getstate__(self):
    return {**self.__dict__, '_records': {}}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    record = self._records.get(index)
    if record is None:
      record = self._records[index] = self.source[index]
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in record.items()}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int | None
  splits: dict[str, int]
  features: tuple[str, ...]


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


@contextlib.contextmanager
def _file_lock(path: str):
  """Exclusive inter-process lock (blocks) so concurrent hosts/processes prepare only once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _download_config(manual_dir: str | None = None):
  import tensorflow_datasets as tfds

  # try_download_gcs=False: TFDS would otherwise probe GCS, which hangs/fails offline.
  return tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
  )


def _one_line(text: str, limit: int = 300) -> str:
  text = re.sub(r'\s+', ' ', text).strip()
  return text if len(text) <= limit else text[: limit - 3] + '...'


def _embedded_builder(name: str, data_dir: str):
  import importlib

  module, cls = EMBEDDED[name]
  builder = getattr(importlib.import_module(module), cls)(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    with _file_lock(os.path.join(data_dir, f'.{name}.prepare.lock')):
      # Re-check under the lock: another process may have finished meanwhile.
      builder = getattr(importlib.import_module(module), cls)(data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        builder.download_and_prepare(download_config=_download_config())
  return builder


def _image_folder_builder(name: str, data_dir: str):
  """'image_folder:/path/to/root' -> prepared core_jax.data.image_folder.ImageFolder builder."""
  from core_jax.data.image_folder import ImageFolder, config_name

  root = name.split(':', 1)[1] if ':' in name else ''
  if not root:
    raise UserError(f'{name!r}: give the folder as image_folder:/path/to/root')
  try:
    make = lambda: ImageFolder(root=root, data_dir=data_dir, file_format='array_record')
    builder = make()
    if not builder.is_prepared():
      with _file_lock(os.path.join(data_dir, f'.image_folder_{config_name(root)}.prepare.lock')):
        builder = make()
        if not builder.is_prepared():
          builder.download_and_prepare(download_config=_download_config())
  except (OSError, ValueError) as e:
    raise UserError(f'dataset {name!r}: {_one_line(str(e), 200)}') from None
  return builder


def segmentation_num_classes(base: str) -> int | None:
  """NUM_CLASSES of a segmentation dataset's module, None for other datasets."""
  import importlib

  module = SEGMENTATION_MODULES.get(base)
  return None if module is None else int(importlib.import_module(module).NUM_CLASSES)


def _manual_files(name: str) -> tuple[str, ...]:
  base, _, config = name.split(':')[0].partition('/')
  return _MANUAL_FILES.get((base, config.split('/')[0]), ())


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tensorflow_installed() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _install_tensorflow() -> str:
  """The command that adds TensorFlow to this install (setup.cfg's `tf` extra), and where to run it."""
  return f"`{sys.executable} -m pip install -c constraints.txt -e '.[tf]'` in {_REPO_ROOT}"


def _tensorflow_hint() -> str:
  """What to add to a hint that prepares a TFDS builder's dataset where TensorFlow is missing."""
  return '' if tensorflow_installed() else f'; both need TensorFlow: {_install_tensorflow()}'


def _check_tensorflow_for(name: str, data_dir: str) -> None:
  """TFDS' own builders (cifar10/100, imagenet2012, cityscapes, ...) read and encode their files with TensorFlow,
  which the base install leaves out (setup.cfg's `tf` extra): say so before anything is written, rather than
  TFDS' banner and a traceback once preparation has begun. Reading a prepared dataset needs no TensorFlow, nor do
  the embedded datasets and image folders (their builders are TF-free)."""
  if tensorflow_installed():
    return
  raise UserError(
      f'preparing dataset {name!r} in {data_dir} needs TensorFlow, which is not installed: run '
      f'{_install_tensorflow()}, then run again'
  )


def _tfds_builder(name: str, data_dir: str, download: bool):
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record', try_gcs=False)
  except (tfds.core.registered.DatasetNotFoundError, ValueError):  # ValueError: TFDS cannot parse the name ('')
    raise UserError(
        f'unknown dataset {name!r}: not an embedded dataset ' f'({", ".join(sorted(EMBEDDED))}) nor a TFDS dataset'
    ) from None
  if builder.is_prepared():
    return builder
  base = name.split('/')[0].split(':')[0]
  manual_dir = os.path.join(data_dir, 'downloads', 'manual')
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if instructions:
    has_files = os.path.isdir(manual_dir) and any(os.scandir(manual_dir))
    needed = _manual_files(name)
    hint = (
        f'put {", ".join(needed)} in {manual_dir}/'
        if needed
        else f'manual files in {manual_dir}/: ' + _one_line(instructions)
    )
    missing = tuple(f for f in needed if not os.path.isfile(os.path.join(manual_dir, f)))
    if missing:
      raise UserError(f'dataset {name!r} is not prepared in {data_dir}: {hint} ' f'(missing: {", ".join(missing)})')
    if not has_files:
      raise UserError(f'dataset {name!r} is not prepared in {data_dir}: {hint}')
  elif not download:
    raise UserError(
        f'dataset {name!r} is not prepared in {data_dir}: run `tfds build {name} --data_dir '
        f'{data_dir} --file_format array_record` on a machine with internet access '
        f'(or call load_source(..., download=True)){_tensorflow_hint()}'
    )
  else:
    hint = 'check network access for the download'
  _check_tensorflow_for(name, data_dir)
  with _file_lock(os.path.join(data_dir, f'.{base}.prepare.lock')):
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record', try_gcs=False)
    if not builder.is_prepared():
      try:
        builder.download_and_prepare(file_format='array_record', download_config=_download_config(manual_dir))
      except Exception as e:  # TFDS raises assorted types for missing/corrupt inputs
        raise UserError(
            f'preparing dataset {name!r} in {data_dir} failed '
            f'({type(e).__name__}: {_one_line(str(e), 200)}); {hint}'
        ) from e
  return builder


def _ade20k_source(name: str, split: str, data_dir: str) -> tuple[Any, DatasetInfo]:
  from core_jax.data import ade20k  # pylint: disable=import-outside-toplevel

  if name.split('/')[0].split(':')[0] == 'scene_parse150':
    raise ade20k.scene_parse150_error(data_dir)
  root = name.split(':', 1)[1] if ':' in name else ade20k.default_root(data_dir)
  source = ade20k.ReleaseFolderSource(root, split)
  info = DatasetInfo(
      name=name,
      num_classes=ade20k.NUM_CLASSES,
      splits=ade20k.split_sizes(source.root),
      features=('image', LABEL_MAP_KEY),
  )
  return CheckedSource(source, name, split), info


def load_source(
    name: str, split: str, data_dir: str | None = None, *, download: bool = False
) -> tuple[Any, DatasetInfo]:
  """Returns (random-access source of decoded numpy dicts, DatasetInfo).

  Embedded datasets, and image-folder trees named 'image_folder:/path/to/root'
  (core_jax.data.image_folder), are prepared into `data_dir` on first use; TFDS datasets are prepared
  (array_record) only from files already present (manual dir or TFDS download cache), unless
  `download=True` allows TFDS to download them.
  """
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):  # data.data_dir, else TFDS_DATA_DIR
    raise UserError(f'data dir {data_dir} is a file, not a directory (data.data_dir, or TFDS_DATA_DIR)')
  base = name.split('/')[0].split(':')[0]
  if base in ('ade20k', 'scene_parse150'):
    return _ade20k_source(name, split, data_dir)
  if base == 'image_folder':
    builder = _image_folder_builder(name, data_dir)
  elif base in EMBEDDED:
    if name != base:  # 'digits/v2' read as digits, the '/v2' dropped without a word
      raise UserError(f'dataset {name!r}: the embedded dataset {base!r} has no configs or versions; name it {base!r}')
    builder = _embedded_builder(base, data_dir)
  else:
    builder = _tfds_builder(name, data_dir, download)
  tinfo = builder.info
  fmt = getattr(tinfo.file_format, 'value', tinfo.file_format)
  if fmt != 'array_record':
    raise UserError(
        f'dataset {name!r} in {data_dir} is prepared as {fmt}, not array_record: '
        'prepare it with --file_format array_record (or use another data_dir)'
    )
  try:
    source = builder.as_data_source(split=split)
  except (KeyError, ValueError) as e:
    raise UserError(
        f'dataset {name!r} has no split {split!r} ' f'(splits: {", ".join(tinfo.splits)}): {_one_line(str(e), 150)}'
    ) from None
  shards = split_shards(source)
  num_classes = segmentation_num_classes(base)
  if num_classes is None and 'label' in tinfo.features.keys():
    num_classes = getattr(tinfo.features['label'], 'num_classes', None)
  features = tuple(tinfo.features.keys())
  if base == 'cityscapes':
    from core_jax.data import cityscapes

    if 'segmentation_label' not in features:
      raise UserError(f'dataset {name!r}: use cityscapes/semantic_segmentation (this config has no labels)')
    source = cityscapes.TrainIdSource(source)
    features = ('image', 'segmentation')
  if base in EMBEDDED:
    source = DecodedOnce(source)
  source = CheckedSource(source, name, split, shards)
  info = DatasetInfo(
      name=name,
      num_classes=num_classes,
      splits={k: int(v.num_examples) for k, v in tinfo.splits.items()},
      features=features,
  )
  return source, info
