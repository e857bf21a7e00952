"""Tests for core_jax.weights, convnext_jax.convert (checkpoint import) and convnext_jax.export (export, CLI).

Run: .venv/bin/python -m pytest tests/convnext/test_convert.py -q

What is verified
  * hierarchical variants (atto..xlarge): a random timm model (LN weights/biases and gamma ~ U(0.5, 1.5), biases
    random) is saved as timm .safetensors and as an official-layout .pth (keys renamed by a test-side function
    that is itself checked against timm's own checkpoint_filter_fn); both import to bit-identical Flax params;
    Flax logits vs timm fp32 eval logits (64x64; tiny also 224) max|diff| <= 1e-5 x max|logit| (at least 1);
    Flax -> timm and Flax -> official exports equal the original tensors bit for bit (same key sets); the timm
    export loads into timm with load_state_dict(strict=True) and gives the same logits; for atto and tiny also via
    timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...)) offline.
  * isotropic variants (timm has none): an official-layout state dict drawn from numpy, saved as .pth and
    .safetensors, imported, and the Flax logits compared against a small torch.nn.functional re-implementation
    of the official isotropic model written here; export round trip bit-exact.
  * error cases: missing / unexpected key, shape mismatch, head mismatch with and without reinit_head,
    corrupt / truncated files, CLI exit status 2 with one 'error: ' line on stderr.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from convnext_jax import convert as C  # noqa: E402
from convnext_jax import create_model, models  # noqa: E402
from convnext_jax import export as E  # noqa: E402
from core_jax import weights as W  # noqa: E402
from core_jax.errors import UserError  # noqa: E402

HIER = [n for n in models.IMAGENET_MODELS if 'iso' not in n]  # the registry's ImageNet models
ISO = [n for n in models.IMAGENET_MODELS if 'iso' in n]
# Logit parity bound, relative to the largest |logit| so that no CPU's float32 rounding can fail it; the README
# states this bound. Measured on an Intel Xeon: atto 4.8e-7 (max|logit| 1.34), iso_small 7.2e-7 absolute.
REL_TOL = 1e-5


@pytest.fixture(autouse=True)
def _free_memory():
  yield
  gc.collect()
  jax.clear_caches()


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _timm_model(name, seed=0, fill=True):
  """timm model (built on the meta device, then filled: much faster than timm's trunc-normal init for xlarge)
  with random conv/linear weights N(0, 0.02^2), LN weights and gamma ~ U(0.5, 1.5), biases ~ U(-0.5, 0.5), so
  every tensor matters for parity."""
  with torch.device('meta'):
    tm = timm.create_model(name, pretrained=False)
  tm = tm.to_empty(device='cpu').eval()
  if not fill:  # uninitialized memory
    return tm
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for k, p in tm.named_parameters():
      if p.ndim > 1:
        p.normal_(0.0, 0.02, generator=g)
      elif k.endswith('gamma') or k.endswith('weight'):  # layer scale and every LN weight
        p.uniform_(0.5, 1.5, generator=g)
      else:
        p.uniform_(-0.5, 0.5, generator=g)
    assert not list(tm.buffers())
  return tm


def _timm_to_official(sd):
  """Test-side reverse of timm's checkpoint_filter_fn: timm keys -> facebookresearch keys; MLP weights 2-D."""
  out = {}
  for k, v in sd.items():
    k2 = k
    k2 = re.sub(r'^stem\.', 'downsample_layers.0.', k2)
    k2 = re.sub(r'^stages\.(\d+)\.downsample\.(\d+)\.', r'downsample_layers.\1.\2.', k2)
    k2 = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.', k2)
    k2 = k2.replace('conv_dw', 'dwconv').replace('mlp.fc', 'pwconv')
    k2 = k2.replace('head.norm.', 'norm.').replace('head.fc.', 'head.')
    if 'pwconv' in k2 and v.ndim == 4:
      v = v.reshape(v.shape[0], v.shape[1])
    out[k2] = v
  return out


def _state_dict_numpy(tm):
  return {k: v.detach().numpy() for k, v in tm.state_dict().items()}  # shares memory with tm


def _target(name, **overrides):
  model = create_model(name, compute=dict(dwconv='xla'), **overrides)
  size = model.patch_size * (1 if 'iso' in name else 8)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return model, shapes['params']


def _flax_logits(model, params, x_nchw):
  out, _ = jax.jit(model.apply)({'params': params}, jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1))))
  return np.asarray(out)


def _assert_same_tensors(a, b):
  assert list(a) == list(b) or set(a) == set(b), (sorted(set(a) ^ set(b)))[:5]
  for k in a:
    assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
    assert np.array_equal(a[k], b[k]), k


def _save_pth(sd, path, wrapper='model'):
  obj = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
  torch.save({wrapper: obj} if wrapper else obj, path)


def _one_line_error(excinfo, *fragments):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  for f in fragments:
    assert f in msg, msg
  return msg


# ------------------------------------------------------------------------------------------------
# core_jax.weights
# ------------------------------------------------------------------------------------------------
def test_flatten_unflatten_roundtrip():
  tree = {'a': {'b': np.ones(2), 'c': {'d': np.zeros(3)}}, 'e': np.arange(4)}
  flat = W.flatten(tree)
  assert list(flat) == ['a/b', 'a/c/d', 'e']
  back = W.unflatten(flat)
  assert W.flatten(back).keys() == flat.keys()
  import flax

  assert list(W.flatten(flax.core.freeze(tree))) == ['a/b', 'a/c/d', 'e']


def test_transforms_roundtrip_and_shapes():
  rng = np.random.default_rng(0)
  cases = [
      (W.CONV, (8, 3, 4, 4), (4, 4, 3, 8)),
      (W.CONV, (8, 1, 7, 7), (7, 7, 1, 8)),
      (W.LINEAR, (6, 5), (5, 6)),
      (W.CONV1X1_AS_LINEAR, (6, 5, 1, 1), (5, 6)),
      (W.IDENTITY, (7,), (7,)),
  ]
  for t, ext_shape, flax_shape in cases:
    w = rng.standard_normal(ext_shape).astype(np.float32)
    k = t.to_flax(w)
    assert k.shape == flax_shape == t.flax_shape(ext_shape)
    assert t.external_shape(flax_shape) == ext_shape
    assert np.array_equal(t.to_external(k), w)
  w = rng.standard_normal((8, 3, 4, 4))
  assert np.array_equal(W.CONV.to_flax(w)[1, 2, 0, 5], w[5, 0, 1, 2])  # kernel[h, w, i, o] == weight[o, i, h, w]


def test_rule_table_both_directions():
  table = W.RuleTable(
      [
          W.Rule('stem/kernel', 'stem.0.weight', W.CONV),
          W.Rule('down_{i:[1-9][0-9]*}/bias', 'layers.{i}.1.bias'),
          W.Rule('s_{i}_b_{j}/fc/kernel', 'stages.{i}.blocks.{j}.fc.weight', W.LINEAR),
      ]
  )
  assert table.to_flax_key('stages.2.blocks.11.fc.weight')[0] == 's_2_b_11/fc/kernel'
  assert table.to_external_key('s_2_b_11/fc/kernel')[0] == 'stages.2.blocks.11.fc.weight'
  assert table.to_flax_key('layers.0.1.bias') is None and table.to_flax_key('layers.3.1.bias')[0] == 'down_3/bias'
  with pytest.raises(ValueError):
    W.Rule('a_{i}', 'b')
  ext = {'stem.0.weight': np.zeros((4, 3, 2, 2), np.float32), 'stages.0.blocks.0.fc.weight': np.zeros((6, 4))}
  flat = W.import_tensors(ext, table, dtype=np.float32)
  assert flat['stem/kernel'].shape == (2, 2, 3, 4) and flat['s_0_b_0/fc/kernel'].dtype == np.float32
  back = W.export_tensors(flat, table)
  assert set(back) == set(ext) and back['stem.0.weight'].flags['C_CONTIGUOUS']
  target = {'stem/kernel': (2, 2, 3, 4), 's_0_b_0/fc/kernel': (4, 6), 's_0_b_1/fc/kernel': (4, 6)}
  with pytest.raises(UserError) as e:
    W.import_tensors(ext, table, target)
  _one_line_error(e, 'missing key stages.0.blocks.1.fc.weight')
  with pytest.raises(UserError) as e:
    W.import_tensors({**ext, 'foo.bar': np.zeros(1)}, table, target)
  _one_line_error(e, 'unexpected key foo.bar')
  with pytest.raises(UserError) as e:
    W.import_tensors({**ext, 'stem.0.weight': np.zeros((4, 3, 3, 3))}, table, target)
  assert str(e.value) == 'stem.0.weight: expected shape (4, 3, 2, 2) but checkpoint has (4, 3, 3, 3)'
  with pytest.raises(UserError) as e:
    W.export_tensors(flat, table, expected={'stem.0.weight': (4, 3, 2, 2)})
  _one_line_error(e, 'unexpected key stages.0.blocks.0.fc.weight')


# ------------------------------------------------------------------------------------------------
# Hierarchical ConvNeXt: timm + official layouts, every variant
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', HIER)
@pytest.mark.slow
def test_hierarchical_import_parity_export(name, tmp_path, highest_precision):
  tm = _timm_model(name)
  sd_timm = _state_dict_numpy(tm)
  sd_off = _timm_to_official(sd_timm)
  # the test's official layout is what timm's own FB filter maps back to exactly these timm tensors
  filtered = timm.models.convnext.checkpoint_filter_fn({'model': sd_off}, tm)
  _assert_same_tensors({k: np.asarray(v) for k, v in filtered.items()}, sd_timm)
  del filtered

  p_timm, p_off = tmp_path / 'timm.safetensors', tmp_path / 'official.pth'
  save_file(sd_timm, str(p_timm))
  _save_pth(sd_off, str(p_off))
  assert C.detect_layout(sd_timm) == 'timm' and C.detect_layout(sd_off) == 'official'
  assert C.infer_arch(sd_timm) == (name, {}) and C.infer_arch(sd_off) == (name, {})

  model, target = _target(name)
  params = C.load_pretrained(target, str(p_timm), arch=name, as_numpy=True)
  params_off = C.load_pretrained({'params': target}, str(p_off), arch=name, as_numpy=True)['params']
  _assert_same_tensors(W.flatten(params), W.flatten(params_off))  # both layouts -> identical Flax params
  del params_off

  sizes = [(64, 64)] + ([(224, 224)] if name == 'convnext_tiny' else [])
  refs = {}
  for size in sizes:
    x = np.random.RandomState(1).randn(2, 3, *size).astype(np.float32)
    with torch.no_grad():
      ref = tm(torch.from_numpy(x)).numpy()
    out = _flax_logits(model, params, x)
    err = float(np.max(np.abs(out - ref)))
    print(f'\n{name} {size}: max|logit diff| = {err:.2e} (max|logit| {np.abs(ref).max():.2f})')
    assert err <= REL_TOL * max(1.0, float(np.abs(ref).max()))
    refs[size] = (x, ref)

  # export: bit-exact round trip in both layouts
  exp_timm = E.flax_to_timm(params, name)
  _assert_same_tensors(exp_timm, sd_timm)
  _assert_same_tensors(E.flax_to_official(params, name), sd_off)
  del sd_off

  # the timm export loads strictly into timm and gives the same logits (through a file for the small models)
  if sum(v.size for v in exp_timm.values()) < 30e6:
    p_exp = tmp_path / 'export.safetensors'
    E.save_timm_safetensors(params, str(p_exp), name)
    from safetensors.torch import load_file

    exp_torch = load_file(str(p_exp))
  else:
    exp_torch = {k: torch.from_numpy(v) for k, v in exp_timm.items()}
  x, ref = refs[(64, 64)]
  fresh = _timm_model(name, fill=False)  # uninitialized; load_state_dict(strict=True) must set every tensor
  fresh.load_state_dict(exp_torch, strict=True)
  del exp_torch, exp_timm, tm
  with torch.no_grad():
    again = fresh(torch.from_numpy(x)).numpy()
  assert np.array_equal(again, ref)


@pytest.mark.parametrize('name', ['convnext_atto', 'convnext_tiny'])
def test_export_loads_with_timm_pretrained_overlay(name, tmp_path, monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  tm = _timm_model(name, seed=3)
  sd = _state_dict_numpy(tm)
  src = tmp_path / 'src.safetensors'
  save_file(sd, str(src))
  params, arch, overrides = C.import_checkpoint(str(src))
  assert (arch, overrides) == (name, {})
  dst = tmp_path / 'out.safetensors'
  E.save_timm_safetensors(params, str(dst), arch)
  tm2 = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(dst))).eval()
  _assert_same_tensors(_state_dict_numpy(tm2), sd)


# ------------------------------------------------------------------------------------------------
# Isotropic ConvNeXt (official layout only; reference = torch.nn.functional re-implementation below)
# ------------------------------------------------------------------------------------------------
def _iso_state_dict(name, seed=0):
  model = create_model(name)
  d, depth = model.dim, model.depth
  rng = np.random.default_rng(seed)

  def normal(*shape, std=0.02):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

  def unif(*shape, lo=0.5, hi=1.5):
    return rng.uniform(lo, hi, shape).astype(np.float32)

  sd = {'stem.weight': normal(d, 3, 16, 16, std=0.05), 'stem.bias': unif(d, lo=-0.5, hi=0.5)}
  for j in range(depth):
    b = f'blocks.{j}.'
    if model.layer_scale_init_value > 0:
      sd[b + 'gamma'] = unif(d, lo=0.05, hi=0.15)
    sd[b + 'dwconv.weight'] = normal(d, 1, 7, 7, std=0.1)
    sd[b + 'dwconv.bias'] = unif(d, lo=-0.5, hi=0.5)
    sd[b + 'norm.weight'] = unif(d)
    sd[b + 'norm.bias'] = unif(d, lo=-0.5, hi=0.5)
    sd[b + 'pwconv1.weight'] = normal(4 * d, d)
    sd[b + 'pwconv1.bias'] = unif(4 * d, lo=-0.5, hi=0.5)
    sd[b + 'pwconv2.weight'] = normal(d, 4 * d)
    sd[b + 'pwconv2.bias'] = unif(d, lo=-0.5, hi=0.5)
  sd['norm.weight'] = unif(d)
  sd['norm.bias'] = unif(d, lo=-0.5, hi=0.5)
  sd['head.weight'] = normal(1000, d)
  sd['head.bias'] = unif(1000, lo=-0.5, hi=0.5)
  return sd


def _iso_reference(sd, x):
  """Official isotropic ConvNeXt forward (facebookresearch models/convnext_isotropic.py), torch.nn.functional."""
  F = torch.nn.functional
  t = {k: torch.from_numpy(v) for k, v in sd.items()}
  d = t['stem.bias'].shape[0]
  h = F.conv2d(torch.from_numpy(x), t['stem.weight'], t['stem.bias'], stride=16)
  j = 0
  while f'blocks.{j}.dwconv.weight' in t:
    b = f'blocks.{j}.'
    y = F.conv2d(h, t[b + 'dwconv.weight'], t[b + 'dwconv.bias'], padding=3, groups=d)
    y = y.permute(0, 2, 3, 1)
    y = F.layer_norm(y, (d,), t[b + 'norm.weight'], t[b + 'norm.bias'], eps=1e-6)
    y = F.linear(
        F.gelu(F.linear(y, t[b + 'pwconv1.weight'], t[b + 'pwconv1.bias'])),
        t[b + 'pwconv2.weight'],
        t[b + 'pwconv2.bias'],
    )
    if b + 'gamma' in t:
      y = t[b + 'gamma'] * y
    h = h + y.permute(0, 3, 1, 2)
    j += 1
  h = F.layer_norm(h.mean((-2, -1)), (d,), t['norm.weight'], t['norm.bias'], eps=1e-6)
  return F.linear(h, t['head.weight'], t['head.bias']).numpy()


@pytest.mark.parametrize('name', ISO)
@pytest.mark.slow
def test_isotropic_import_parity_export(name, tmp_path, highest_precision):
  sd = _iso_state_dict(name)
  assert C.detect_layout(sd) == 'official_iso'
  assert C.infer_arch(sd) == (name, {})
  p_pth, p_st = tmp_path / 'iso.pth', tmp_path / 'iso.safetensors'
  _save_pth(sd, str(p_pth), wrapper='model')
  save_file(sd, str(p_st))
  model, target = _target(name)
  params = C.load_pretrained(target, str(p_pth), arch=name, as_numpy=True)
  _assert_same_tensors(W.flatten(params), W.flatten(C.load_pretrained(target, str(p_st), arch=name, as_numpy=True)))
  x = np.random.RandomState(1).randn(2, 3, 64, 64).astype(np.float32)
  with torch.no_grad():
    ref = _iso_reference(sd, x)
  out = _flax_logits(model, params, x)
  err = float(np.max(np.abs(out - ref)))
  print(f'\n{name} (64, 64): max|logit diff| vs torch functional reference = {err:.2e}')
  assert err <= REL_TOL * max(1.0, float(np.abs(ref).max()))
  _assert_same_tensors(E.flax_to_official(params, name), sd)
  _assert_same_tensors(E.flax_to_timm(params, name), sd)  # no timm iso: official iso layout


# ------------------------------------------------------------------------------------------------
# Flax-native format, CLI
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def atto_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('atto')
  tm = _timm_model('convnext_atto', seed=5)
  sd = _state_dict_numpy(tm)
  save_file(sd, str(d / 'timm.safetensors'))
  _save_pth(_timm_to_official(sd), str(d / 'official.pth'))
  return d, sd


def test_flax_msgpack_and_sidecar(atto_files, tmp_path):
  d, sd = atto_files
  params, arch, _ = C.import_checkpoint(str(d / 'official.pth'))
  side = E.save_flax(params, str(tmp_path / 'm.msgpack'), arch=arch, metrics={'top1': 0.5})
  meta = json.load(open(side))
  assert set(meta) == {
      'arch',
      'num_classes',
      'input_size',
      'mean',
      'std',
      'interpolation',
      'crop_pct',
      'metrics',
      'timm',
  }
  assert meta['timm'] == E.timm_recipe('convnext_atto')
  assert meta['arch'] == 'convnext_atto' and meta['num_classes'] == 1000 and meta['input_size'] == [3, 224, 224]
  assert meta['crop_pct'] == 0.875 and meta['interpolation'] == 'bicubic' and meta['metrics'] == {'top1': 0.5}
  tree, meta2 = C.load_flax(str(tmp_path / 'm.msgpack'))
  assert meta2 == meta
  _assert_same_tensors(W.flatten(tree), W.flatten(params))
  # msgpack -> strict load into a target
  _, target = _target('convnext_atto')
  again = C.load_pretrained(target, str(tmp_path / 'm.msgpack'), as_numpy=True)
  _assert_same_tensors(W.flatten(again), W.flatten(params))


def test_cli_roundtrip(atto_files, tmp_path, capsys):
  d, sd = atto_files
  mp, st, pth = tmp_path / 'a.msgpack', tmp_path / 'a.safetensors', tmp_path / 'a.pth'
  assert E.main(['--src', str(d / 'official.pth'), '--dst', str(mp)]) == 0
  assert json.load(open(tmp_path / 'a.json'))['arch'] == 'convnext_atto'
  assert E.main(['--src', str(mp), '--dst', str(st)]) == 0
  assert E.main(['--src', str(mp), '--dst', str(pth)]) == 0
  from safetensors.numpy import load_file

  _assert_same_tensors(load_file(str(st)), sd)  # timm conv_mlp layout, bit-exact
  off = torch.load(str(pth), map_location='cpu', weights_only=True)['model']
  _assert_same_tensors({k: v.numpy() for k, v in off.items()}, _timm_to_official(sd))
  out = capsys.readouterr().out
  assert 'convnext_atto' in out


def _save_step(step_dir, state):
  """A step directory as core_jax.checkpoint writes its state item."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  saver = ocp.StandardCheckpointer()
  saver.save(str(step_dir / 'state'), state)
  saver.wait_until_finished()
  return step_dir


def _convert_process(src, dst):
  return subprocess.run(
      [sys.executable, '-m', 'convnext_jax.convert', '--src', str(src), '--dst', str(dst)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )


def test_cli_exports_a_training_checkpoint(atto_files, tmp_path):
  """WORKDIR/checkpoints/STEP (as core_jax.checkpoint writes it) -> timm .safetensors, params or EMA."""
  d, sd = atto_files
  params, _, _ = C.import_checkpoint(str(d / 'official.pth'))
  ema = jax.tree.map(lambda v: np.asarray(v) * 0.5, params)
  step_dir = _save_step(tmp_path / 'checkpoints' / '7', {'params': params, 'ema_params': ema, 'step': 7})
  from safetensors.numpy import load_file

  assert E.main(['--src', str(step_dir), '--dst', str(tmp_path / 'p.safetensors')]) == 0
  _assert_same_tensors(load_file(str(tmp_path / 'p.safetensors')), sd)
  assert E.main(['--src', str(step_dir), '--dst', str(tmp_path / 'e.safetensors'), '--ema']) == 0
  got = load_file(str(tmp_path / 'e.safetensors'))
  np.testing.assert_array_equal(got['head.fc.weight'], sd['head.fc.weight'] * 0.5)
  assert E.main(['--src', str(tmp_path), '--dst', str(tmp_path / 'x.safetensors')]) == 0  # a workdir: latest step
  _assert_same_tensors(load_file(str(tmp_path / 'x.safetensors')), sd)
  os.makedirs(tmp_path / 'empty')
  assert E.main(['--src', str(tmp_path / 'empty'), '--dst', str(tmp_path / 'y.safetensors')]) == 2  # no checkpoint


def test_cli_num_classes_reinit(atto_files, tmp_path, caplog):
  d, sd = atto_files
  mp = tmp_path / 'ft.msgpack'
  with caplog.at_level('WARNING'):
    assert E.main(['--src', str(d / 'timm.safetensors'), '--dst', str(mp), '--num-classes', '10']) == 0
  assert any('head re-initialized' in r.getMessage() for r in caplog.records)
  tree, meta = C.load_flax(str(mp))
  assert meta['num_classes'] == 10 and tree['head']['kernel'].shape == (320, 10)
  assert np.array_equal(tree['head_norm']['scale'], sd['head.norm.weight'])


def test_cli_dst_that_is_a_folder_is_one_line_before_the_work(atto_files, tmp_path, capsys):
  d, _ = atto_files
  (tmp_path / 'out.msgpack').mkdir()
  assert E.main(['--src', str(d / 'timm.safetensors'), '--dst', str(tmp_path / 'out.msgpack')]) == 2
  assert capsys.readouterr().err == f'error: output {tmp_path / "out.msgpack"} is a folder: name a file to write\n'
  assert os.listdir(tmp_path / 'out.msgpack') == []


@pytest.mark.parametrize('classes', ['0', '-3'])
def test_cli_num_classes_below_one_is_one_line(atto_files, tmp_path, capsys, classes):
  """-3 wrote a head of no classes and exited 0."""
  d, _ = atto_files
  mp = tmp_path / 'ft.msgpack'
  assert E.main(['--src', str(d / 'timm.safetensors'), '--dst', str(mp), '--num-classes', classes]) == 2
  assert capsys.readouterr().err == f'error: --num-classes must be a positive number of classes, got {classes}\n'
  assert not mp.exists() and not (tmp_path / 'ft.json').exists()


@pytest.mark.slow  # a converter process: ~13 s on 2 cores
def test_cli_export_of_a_training_step_as_a_process_writes_nothing_on_stderr(atto_files, tmp_path):
  """orbax's 'WARNING:absl:Metadata file does not exist' came before the summary line of every step export."""
  d, _ = atto_files
  params, _, _ = C.import_checkpoint(str(d / 'official.pth'))
  step_dir = _save_step(tmp_path / 'checkpoints' / '3', {'params': params, 'step': 3})
  r = _convert_process(step_dir, tmp_path / 'p.msgpack')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  assert r.stdout.startswith(f'{step_dir} -> {tmp_path / "p.msgpack"}: convnext_atto, '), r.stdout


@pytest.mark.slow
def test_cli_errors_exit_2(atto_files, tmp_path, capsys):
  d, sd = atto_files
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(b'this is not a checkpoint')
  cases = [
      ['--src', str(bad), '--dst', str(tmp_path / 'x.msgpack')],
      ['--src', str(tmp_path / 'nope.pth'), '--dst', str(tmp_path / 'x.msgpack')],
      ['--src', str(d / 'timm.safetensors'), '--dst', str(tmp_path / 'x.txt')],
      ['--src', str(d / 'timm.safetensors'), '--dst', str(tmp_path / 'x.msgpack'), '--arch', 'convnext_tiny'],
      ['--src', str(d / 'timm.safetensors')],  # argparse error: still one line
  ]
  for argv in cases:
    assert E.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
  # the real process: exit status 2 and exactly one stderr line
  r = _convert_process(bad, tmp_path / 'y.msgpack')
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: cannot read'), r.stderr


# ------------------------------------------------------------------------------------------------
# Strict-loading error cases
# ------------------------------------------------------------------------------------------------
def _load_modified(sd, tmp_path, **kw):
  p = tmp_path / 'mod.safetensors'
  save_file(sd, str(p))
  _, target = _target('convnext_atto')
  return C.load_pretrained(target, str(p), arch='convnext_atto', as_numpy=True, **kw)


def test_missing_key(atto_files, tmp_path):
  _, sd = atto_files
  sd = dict(sd)
  del sd['stages.1.blocks.0.gamma']
  with pytest.raises(UserError) as e:
    _load_modified(sd, tmp_path)
  _one_line_error(e, 'missing key stages.1.blocks.0.gamma')


def test_unexpected_keys(atto_files, tmp_path):
  _, sd = atto_files
  with pytest.raises(UserError) as e:
    _load_modified({**sd, 'stages.0.blocks.0.foo.weight': np.zeros(3, np.float32)}, tmp_path)
  _one_line_error(e, 'unexpected key stages.0.blocks.0.foo.weight')
  with pytest.raises(UserError) as e:  # maps to a Flax path the model does not have (stage 0 has 2 blocks)
    _load_modified({**sd, 'stages.0.blocks.2.gamma': np.zeros(40, np.float32)}, tmp_path)
  _one_line_error(e, 'unexpected key stages.0.blocks.2.gamma', 'stages_0_block_2/gamma')


def test_shape_mismatch(atto_files, tmp_path):
  _, sd = atto_files
  with pytest.raises(UserError) as e:
    _load_modified({**sd, 'stages.0.blocks.1.conv_dw.weight': np.zeros((40, 1, 5, 5), np.float32)}, tmp_path)
  assert (
      str(e.value) == 'stages.0.blocks.1.conv_dw.weight: expected shape (40, 1, 7, 7) but checkpoint has (40, 1, 5, 5)'
  )


def test_another_width_is_not_called_a_head_size_mismatch(atto_files, tmp_path):
  """atto's weights as convnext_femto (another width): was 'head.fc.weight: expected (1000, 384) but checkpoint has
  (1000, 320) (head size mismatch; use reinit_head=True ...)', which re-initializing the head would not fix."""
  d, _ = atto_files
  with pytest.raises(UserError) as e:
    C.import_checkpoint(str(d / 'timm.safetensors'), arch='convnext_femto')
  assert 'head size' not in str(e.value) and 'reinit' not in str(e.value), str(e.value)
  _one_line_error(e, 'expected shape (', ' but checkpoint has (')


def test_head_mismatch_and_reinit(atto_files, tmp_path, caplog):
  _, sd = atto_files
  rng = np.random.default_rng(0)
  sd22k = {
      **sd,
      'head.fc.weight': rng.standard_normal((21841, 320), dtype=np.float32),
      'head.fc.bias': rng.standard_normal(21841, dtype=np.float32),
  }
  with pytest.raises(UserError) as e:
    _load_modified(sd22k, tmp_path)
  _one_line_error(e, 'head.fc.weight', '(1000, 320)', '(21841, 320)')
  # reinit_head: head keeps the target's (fresh) values, everything else comes from the checkpoint
  p = tmp_path / '22k.safetensors'
  save_file(sd22k, str(p))
  model, abstract = _target('convnext_atto')
  head = {'kernel': np.full((320, 1000), 0.25, np.float32), 'bias': np.full((1000,), -1.0, np.float32)}
  target = {**abstract, 'head': head}
  with caplog.at_level('WARNING'):
    params = C.load_pretrained(target, str(p), arch='convnext_atto', reinit_head=True)
  msgs = [r.getMessage() for r in caplog.records if 'head re-initialized' in r.getMessage()]
  assert len(msgs) == 1 and '\n' not in msgs[0] and '(21841, 320)' in msgs[0]
  assert np.array_equal(np.asarray(params['head']['kernel']), head['kernel'])
  assert np.array_equal(np.asarray(params['head']['bias']), head['bias'])
  assert np.array_equal(np.asarray(params['head_norm']['scale']), sd['head.norm.weight'])
  assert isinstance(params['stem_conv']['kernel'], jax.Array)


def test_arch_inference_overrides(atto_files):
  _, sd = atto_files
  no_gamma = {k: v for k, v in sd.items() if not k.endswith('gamma')}
  assert C.infer_arch(no_gamma) == ('convnext_atto', {'layer_scale_init_value': 0.0})
  headless = {k: v for k, v in sd.items() if not k.startswith('head.fc')}
  assert C.infer_arch(headless) == ('convnext_atto', {'num_classes': 0})
  odd = {k: v for k, v in sd.items() if not k.startswith('stages.3.blocks.1.')}
  with pytest.raises(UserError) as e:
    C.infer_arch(odd)
  _one_line_error(e, 'matches no registered model', 'depths=(2, 2, 6, 1)')
  with pytest.raises(UserError) as e:
    C.detect_layout({'foo.weight': 1})
  _one_line_error(e, 'unknown checkpoint layout')


def test_wrappers_and_ema(atto_files, tmp_path):
  _, sd = atto_files
  off = _timm_to_official(sd)
  _, target = _target('convnext_atto')
  for wrapper in ['state_dict', 'model_ema', None]:
    p = tmp_path / f'{wrapper}.pth'
    _save_pth(off, str(p), wrapper=wrapper)
    params = C.load_pretrained(target, str(p), as_numpy=True)
    assert np.array_equal(params['stem_conv']['bias'], sd['stem.0.bias'])
  both = {
      'model': {k: torch.from_numpy(v) for k, v in off.items()},
      'model_ema': {k: torch.from_numpy(v + 1) for k, v in off.items()},
  }
  torch.save(both, str(tmp_path / 'train.pth'))
  p = C.load_pretrained(target, str(tmp_path / 'train.pth'), as_numpy=True)
  pe = C.load_pretrained(target, str(tmp_path / 'train.pth'), ema=True, as_numpy=True)
  assert np.array_equal(p['stem_conv']['bias'], sd['stem.0.bias'])
  assert np.array_equal(pe['stem_conv']['bias'], sd['stem.0.bias'] + 1)


def test_corrupt_and_truncated_files(atto_files, tmp_path):
  d, _ = atto_files
  _, target = _target('convnext_atto')
  blobs = {}
  for src in ['timm.safetensors', 'official.pth']:
    data = (d / src).read_bytes()
    blobs['trunc_' + src] = data[: len(data) // 2]
  blobs['garbage.safetensors'] = b'\x00' * 64
  blobs['empty.pth'] = b''
  blobs['garbage.msgpack'] = b'\xc1\xc1\xc1'
  for fname, data in blobs.items():
    p = tmp_path / fname
    p.write_bytes(data)
    with pytest.raises(UserError) as e:
      C.load_pretrained(target, str(p))
    _one_line_error(e, 'cannot read', fname)
  # pickled code is never executed: a pickle of an arbitrary object is refused by weights_only=True
  p = tmp_path / 'evil.pth'
  torch.save({'model': {'x': _Evil()}}, str(p))
  with pytest.raises(UserError) as e:
    C.read_checkpoint(str(p))
  msg = _one_line_error(e, str(p), 'pickled Python objects', '_Evil', 'was not loaded')
  assert '\x1b' not in msg and not msg.endswith('...') and len(msg) < 400, msg
  with pytest.raises(UserError) as e:  # the same words on the init_from path
    C.load_pretrained(target, str(p))
  assert str(e.value) == msg


class _Evil:
  pass


# ------------------------------------------------------------------------------------------------
# Trained models: a training checkpoint names its own model; timm recipes (issue 11 items 4 and 5)
# ------------------------------------------------------------------------------------------------
def _tiny_config(data_dir, steps=2):
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location('_tiny_config', os.path.join(ROOT, 'tests', 'core', 'tiny_config.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.num_train_steps = steps
  c.checkpoint.every_steps = steps
  c.checkpoint.asynchronous = False
  c.data.data_dir = str(data_dir)
  return c


@pytest.fixture(scope='module')
def trained_tiny(tmp_path_factory, tfds_dir):
  """A convnext_digits with model.overrides (depths/dims: no registry model has them) trained 2 steps."""
  from convnext_jax import train  # pylint: disable=import-outside-toplevel
  from core_jax import checkpoint  # pylint: disable=import-outside-toplevel

  workdir = tmp_path_factory.mktemp('tiny_run')
  config = _tiny_config(tfds_dir)
  train.run(config, str(workdir))
  return checkpoint.latest_step_dir(str(workdir)), config


def _digits_logits_check(flax_model, params, tm, size=32):
  x = np.random.RandomState(2).randn(3, 3, size, size).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x)).numpy()
  out = _flax_logits(flax_model, params, x)
  err = float(np.max(np.abs(out - ref)))
  assert err <= REL_TOL * max(1.0, float(np.abs(ref).max())), err
  return err


@pytest.mark.slow
def test_training_checkpoint_with_overrides_exports_to_timm(trained_tiny, tmp_path, capsys, highest_precision):
  from core_jax import checkpoint  # pylint: disable=import-outside-toplevel

  step_dir, config = trained_tiny
  dst = tmp_path / 'mine.safetensors'
  assert E.main(['--src', step_dir, '--dst', str(dst)]) == 0
  out = capsys.readouterr().out
  assert 'depths=[1, 1, 1, 1], dims=[8, 16, 16, 16]' in out
  assert 'model.stages[0].downsample = torch.nn.Identity()' in out
  meta = json.load(open(tmp_path / 'mine.json'))
  assert meta['arch'] == 'convnext_digits' and meta['num_classes'] == 10
  assert meta['overrides'] == {'depths': [1, 1, 1, 1], 'dims': [8, 16, 16, 16]}
  assert meta['mean'] == [0.5, 0.5, 0.5] and meta['std'] == [0.5, 0.5, 0.5]  # the run's own normalize
  assert meta['metrics'] == json.load(open(os.path.join(step_dir, '..', '..', 'results.json')))['eval']
  assert meta['timm']['identity'] == ['stages.0.downsample'] and meta['timm']['kwargs']['patch_size'] == 2
  # the exact model that was trained, from its config, with its trained weights
  trained = checkpoint.read_training_checkpoint(step_dir)['params']
  model = create_model(config.model.name, num_classes=10, **config.model.overrides)
  # the helper: strict load, same logits
  tm = E.timm_model_for(str(dst))
  _digits_logits_check(model, trained, tm)
  # the printed recipe, run as it is
  scope = {}
  exec(meta['timm']['python'].replace('PATH', repr(str(dst))), scope)  # pylint: disable=exec-used
  _digits_logits_check(model, trained, scope['model'].eval())
  # timm's constructor alone builds a stride-2 stage-0 downsample the trained model does not have
  plain = timm.create_model(meta['timm']['model_name'], **meta['timm']['kwargs'])  # builder: create_model
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

  with pytest.raises(RuntimeError, match='stages.0.downsample'):
    plain.load_state_dict(load_file(str(dst)), strict=True)
  # the same through a Flax msgpack (its sidecar carries the overrides) -> timm: the very same tensors
  mp, again = tmp_path / 'mine.msgpack', tmp_path / 'again.safetensors'
  assert E.main(['--src', step_dir, '--dst', str(mp)]) == 0
  assert E.main(['--src', str(mp), '--dst', str(again)]) == 0
  _assert_same_tensors(load_file(str(again)), load_file(str(dst)))
  # and back into a training config's init_from (the task's loader) with the right shapes
  params = C.load_pretrained(jax.tree.map(np.asarray, trained), str(again), arch='convnext_digits', as_numpy=True)
  _assert_same_tensors(W.flatten(params), W.flatten(trained))


def _random_params(model, size, seed):
  """Random params of `model` from its abstract shapes (no jit of init): every tensor non-trivial."""
  shapes = jax.eval_shape(
      model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, model.in_chans), jnp.float32)
  )['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) * 0.1 if len(s.shape) > 1 else rng.uniform(0.5, 1.5, s.shape)).astype(
          np.float32
      ),
      shapes,
  )


@pytest.mark.slow
def test_demo_architecture_timm_recipe_round_trip(tmp_path, highest_precision):
  """convnext_digits as the demo trains it (no overrides): the recipe builds it in timm; strict load; logits."""
  model = create_model('convnext_digits', compute=dict(dwconv='xla'))
  params = _random_params(model, 32, seed=4)
  src = tmp_path / 'digits.msgpack'
  E.save_flax(params, str(src), arch='convnext_digits', input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
  dst = tmp_path / 'digits.safetensors'
  summary = E.convert(str(src), str(dst))
  assert 'model.stages[0].downsample = torch.nn.Identity()' in summary
  meta = json.load(open(tmp_path / 'digits.json'))
  assert meta['arch'] == 'convnext_digits' and meta['input_size'] == [3, 32, 32]  # carried from the source sidecar
  assert meta['mean'] == [0.5] * 3 and meta['std'] == [0.5] * 3
  recipe = meta['timm']
  assert recipe == E.timm_recipe('convnext_digits')
  assert recipe['kwargs'] == {
      'depths': [1, 1, 3, 1],
      'dims': [32, 64, 128, 256],
      'in_chans': 3,
      'num_classes': 10,
      'patch_size': 2,
      'kernel_sizes': 7,
      'ls_init_value': 1e-6,
      'conv_mlp': False,
  }
  tm = E.timm_model_for(str(dst))  # load_state_dict(strict=True) inside
  _digits_logits_check(model, params, tm)
  assert E.timm_model_for(meta, load_weights=False).stages[0].downsample.__class__.__name__ == 'Identity'


def test_overridden_atto_loads_through_timm_pretrained_overlay(tmp_path, monkeypatch):
  """No replacement needed (patch 4): timm's own pretrained path takes the export with the recipe's kwargs."""
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  overrides = {'depths': (1, 1, 2, 1), 'num_classes': 7}
  recipe = E.timm_recipe('convnext_atto', overrides)
  assert recipe['identity'] == [] and recipe['model_name'] == 'convnext_atto' and recipe['kwargs']['conv_mlp']
  params = _random_params(create_model('convnext_atto', **overrides), 32, seed=6)
  dst = tmp_path / 'out.safetensors'
  sd = E.save_timm_safetensors(params, str(dst), 'convnext_atto')
  scope = {'timm': timm}
  exec(recipe['python_pretrained'].replace('PATH', repr(str(dst))), scope)  # pylint: disable=exec-used
  _assert_same_tensors(_state_dict_numpy(scope['model']), sd)


@pytest.mark.parametrize(
    'name,overrides',
    [(n, {}) for n in HIER]
    + [
        ('convnext_digits', {}),
        ('convnext_digits', {'depths': (1, 1, 1, 1), 'dims': (8, 16, 16, 16)}),
        ('convnext_tiny', {'patch_size': 2, 'kernel_size': 5, 'layer_scale_init_value': 0.0}),
        ('convnext_nano', {'num_classes': 0}),
    ],
)
def test_timm_recipe_builds_the_export_layout(name, overrides):
  """For every registry ConvNeXt (and overridden ones): the recipe's timm module has exactly the keys and shapes
  the export writes (built on the meta device, export computed from shapes: no weights materialized)."""
  recipe = E.timm_recipe(name, overrides)
  with torch.device('meta'):
    tm = E.timm_model_for(recipe, load_weights=False)
  want = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
  model, shapes = _target(name, **overrides)
  table = C.rule_table('timm', conv_mlp=name in C.CONV_MLP_ARCHS)
  got = {}
  for path, leaf in W.flatten(shapes).items():
    key, rule = table.to_external_key(path)
    got[key] = rule.transform.external_shape(tuple(leaf.shape))
  assert got == want
  if name in E.TIMM_NAMES and not overrides:
    assert recipe['identity'] == [] and recipe['model_name'] == name
    with torch.device('meta'):
      named = timm.create_model(name)
    assert {k: tuple(v.shape) for k, v in named.state_dict().items()} == want


def test_sidecar_preprocessing_from_the_training_eval_transforms(repo_root):
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location('_in1k', os.path.join(repo_root, 'configs', 'convnext', 'in1k.py'))
  in1k = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(in1k)
  prep = C._eval_preprocessing  # pylint: disable=protected-access
  assert prep(in1k.EVAL_224) == {'input_size': [3, 224, 224], 'crop_pct': 0.875, 'interpolation': 'bicubic'}
  assert prep(in1k.EVAL_384)['crop_pct'] == 1.0
  assert prep(['normalize(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))']) == {
      'mean': [0.5, 0.4, 0.3],
      'std': [0.2, 0.2, 0.2],
  }


def test_timm_recipe_refuses_what_timm_cannot_build():
  for name, overrides, message in [
      ('convnext_iso_small', {}, 'timm has no ConvNeXtIsotropic'),
      ('convnext_tiny', {'depths': (2, 2, 2), 'dims': (8, 16, 32)}, '4 stages'),
      ('convnext_tiny', {'patch_size': 8}, 'dilate'),
  ]:
    with pytest.raises(UserError, match=message):
      E.timm_recipe(name, overrides)
