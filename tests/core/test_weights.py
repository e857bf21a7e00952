"""core_jax.weights: the one reader of weight files and the one merge into a fresh tree."""

import argparse
import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import serialization
from safetensors.numpy import save_file

from core_jax import weights as W
from core_jax.errors import UserError

RNG = np.random.default_rng(0)
SD = {'conv.weight': RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), 'fc.bias': np.arange(5, dtype=np.float32)}


def _one_line(e) -> str:
  text = str(e.value)
  assert '\n' not in text, text
  return text


def _same(a, b):
  assert set(a) == set(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_reads_pth_with_wrappers_ema_module_prefix_and_meta(tmp_path):
  tensors = {k: torch.from_numpy(v) for k, v in SD.items()}
  plain = str(tmp_path / 'plain.pth')
  torch.save(tensors, plain)
  got = W.read_weights(plain)
  assert got.kind == 'torch' and got.meta == {}
  _same(got.tensors, SD)

  wrapped = str(tmp_path / 'wrapped.pth.tar')  # the layout of the pruning repo: cfg next to the state dict
  ema = {k: v + 1 for k, v in tensors.items()}
  torch.save({'cfg': [4, 'M', 8], 'epoch': 3, 'state_dict': tensors, 'model_ema': ema}, wrapped)
  got = W.read_weights(wrapped)
  _same(got.tensors, SD)
  assert got.meta == {'cfg': [4, 'M', 8], 'epoch': 3}
  _same(W.read_weights(wrapped, ema=True).tensors, {k: v + 1 for k, v in SD.items()})

  ddp = str(tmp_path / 'ddp.bin')
  torch.save({f'module.{k}': v for k, v in tensors.items()}, ddp)
  _same(W.read_weights(ddp).tensors, SD)
  half = str(tmp_path / 'half.pt')
  torch.save({'w': torch.ones(2, dtype=torch.bfloat16)}, half)
  assert W.read_weights(half).tensors['w'].dtype == np.float32
  with pytest.raises(UserError) as e:
    W.read_weights(plain, ema=True)
  assert 'no EMA weights' in _one_line(e)


def test_pth_with_pickled_objects_is_refused_in_one_line(tmp_path):
  path = str(tmp_path / 'args.pth')
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in SD.items()}, 'args': argparse.Namespace(lr=0.1)}, path)
  with pytest.raises(UserError) as e:
    W.read_weights(path)
  text = _one_line(e)
  assert text.startswith(f'{path} holds pickled Python objects (argparse.Namespace)')
  assert 'weights_only=True' in text and 'was not loaded' in text and len(text) < 400


def test_reads_safetensors_with_sidecar_and_msgpack(tmp_path):
  path = str(tmp_path / 'w.safetensors')
  save_file(SD, path)
  got = W.read_weights(path)
  assert got.kind == 'safetensors' and got.meta == {}
  _same(got.tensors, SD)
  json.dump({'arch': 'x'}, open(tmp_path / 'w.json', 'w'))
  assert W.read_weights(path).meta == {'arch': 'x'}
  sniffed = str(tmp_path / 'w.weights')  # no known extension: the header says safetensors
  save_file(SD, sniffed)
  assert W.read_weights(sniffed).kind == 'safetensors'

  tree = {'params': {'conv': {'kernel': SD['conv.weight']}, 'fc': {'bias': SD['fc.bias']}}}
  packed = str(tmp_path / 'p.msgpack')
  open(packed, 'wb').write(serialization.to_bytes(tree))
  got = W.read_weights(packed)
  assert got.kind == 'msgpack'
  _same(got.tensors, {'conv/kernel': SD['conv.weight'], 'fc/bias': SD['fc.bias']})


@pytest.mark.parametrize(
    'name, data, words',
    [
        ('trunc.safetensors', b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":', 'cannot read'),
        ('empty.pth', b'', 'cannot read'),
        ('junk.msgpack', b'\xc1\xc1', 'cannot read'),
        ('junk.weights', b'nothing known', 'cannot tell the format'),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, name, data, words):
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(UserError) as e:
    W.read_weights(str(path))
  assert words in _one_line(e) and name in str(e.value)


def test_missing_path_and_a_folder_without_checkpoints(tmp_path):
  with pytest.raises(UserError, match='weights not found'):
    W.read_weights(str(tmp_path / 'nope.pth'))
  with pytest.raises(UserError, match='neither a training checkpoint step'):
    W.read_weights(str(tmp_path))


def test_reads_a_step_dir_and_a_workdir_latest_step(tmp_path):
  params = {'conv': {'kernel': SD['conv.weight']}}
  stats = {'bn': {'mean': SD['fc.bias']}}
  saver = ocp.StandardCheckpointer()
  for step, offset in ((3, 0.0), (7, 1.0)):
    state = {'params': {'conv': {'kernel': params['conv']['kernel'] + offset}}, 'batch_stats': stats}
    saver.save(str(tmp_path / 'checkpoints' / str(step) / 'state'), dict(state, step=np.int32(step)))
  saver.wait_until_finished()
  got = W.read_weights(str(tmp_path / 'checkpoints' / '3'))
  assert got.kind == 'step'
  _same(got.tensors, {'params/conv/kernel': SD['conv.weight'], 'batch_stats/bn/mean': SD['fc.bias']})
  latest = W.read_weights(str(tmp_path))  # a workdir: its newest step
  assert latest.meta['step_dir'].endswith(os.path.join('checkpoints', '7'))
  np.testing.assert_array_equal(latest.tensors['params/conv/kernel'], SD['conv.weight'] + 1.0)
  with pytest.raises(UserError, match='has no ema_params'):
    W.read_weights(str(tmp_path), ema=True)


FRESH = {
    'params': {
        'stem': {'kernel': np.zeros((3, 3, 3, 4), np.float32)},
        'head': {'kernel': np.full((4, 10), 7.0, np.float32), 'bias': np.zeros(10, np.float32)},
        'lam': {'rbf_lambda': np.float32(0.5)},
    },
    'batch_stats': {'bn': {'mean': np.zeros(4, np.float32)}},
}


def _loaded(**changes):
  flat = {k: np.asarray(v) + 1.0 for k, v in W.flatten(FRESH).items()}
  flat.update(changes)
  return {k: v for k, v in flat.items() if v is not None}


def test_merge_exact_casts_to_the_fresh_dtype():
  loaded = _loaded(**{'params/stem/kernel': np.ones((3, 3, 3, 4), np.float64)})
  out = W.flatten(W.merge_params(W.unflatten(loaded), FRESH))
  assert list(out) == list(W.flatten(FRESH))
  assert out['params/stem/kernel'].dtype == np.float32 and np.all(out['params/stem/kernel'] == 1.0)
  assert np.all(out['params/head/kernel'] == 8.0)


def test_merge_keep_fresh_and_optional():
  loaded = _loaded(
      **{'params/head/kernel': np.zeros((4, 1000)), 'params/head/bias': None, 'params/lam/rbf_lambda': None}
  )
  out = W.flatten(W.merge_params(loaded, FRESH, keep_fresh=['params/head/.*'], optional=[r'.*/rbf_lambda']))
  assert np.all(out['params/head/kernel'] == 7.0) and out['params/head/kernel'].shape == (4, 10)  # kept fresh
  assert out['params/lam/rbf_lambda'] == 0.5  # optional, missing from the file: fresh
  assert np.all(out['params/stem/kernel'] == 1.0)
  # optional keys the model lacks are dropped, present ones are loaded
  extra = dict(_loaded(), **{'params/other/rbf_lambda': np.float32(2)})
  out = W.flatten(W.merge_params(extra, FRESH, optional=[r'.*/rbf_lambda']))
  assert out['params/lam/rbf_lambda'] == 1.5 and 'params/other/rbf_lambda' not in out


def test_merge_errors_name_the_key_and_both_shapes():
  with pytest.raises(UserError) as e:
    W.merge_params(_loaded(**{'params/head/kernel': np.zeros((4, 1000))}), FRESH, source='ckpt.pth')
  assert _one_line(e) == 'params/head/kernel: the model has shape (4, 10) but ckpt.pth has (4, 1000)'
  with pytest.raises(UserError) as e:
    W.merge_params(_loaded(**{'batch_stats/bn/mean': None}), FRESH, source='ckpt.pth', hint=': wrong cfg')
  assert _one_line(e) == 'ckpt.pth has no batch_stats/bn/mean (the model needs shape (4,)): wrong cfg'
  with pytest.raises(UserError) as e:
    W.merge_params(_loaded(**{'params/x/w': np.zeros(2), 'params/y/w': np.zeros(1)}), FRESH, source='ckpt.pth')
  assert _one_line(e) == 'ckpt.pth has params/x/w (shape (2,)), which the model lacks (and 1 more)'
  abstract = {'head': {'kernel': np.zeros((4, 10)).view(np.float64)}}
  assert W.merge_params({'head/kernel': np.ones((4, 10))}, abstract)['head']['kernel'].dtype == np.float64
  import jax  # pylint: disable=import-outside-toplevel

  shapes = {'head': {'kernel': jax.ShapeDtypeStruct((4, 10), np.float32)}}
  with pytest.raises(UserError, match='needs a concrete initial value'):
    W.merge_params({}, shapes, keep_fresh=['head/.*'])


def test_write_atomic_onto_a_folder_is_one_line_and_keeps_it(tmp_path):
  """os.replace's IsADirectoryError was a traceback (convnext_jax.convert --dst=existing_folder.msgpack)."""
  folder = tmp_path / 'w.msgpack'
  folder.mkdir()
  (folder / 'kept').write_text('x')
  with pytest.raises(UserError, match=r'^output .*w.msgpack is a folder: name a file to write$'):
    W.write_atomic(str(folder), lambda p: open(p, 'w').write('new'))
  assert os.listdir(folder) == ['kept'] and sorted(os.listdir(tmp_path)) == ['w.msgpack']
