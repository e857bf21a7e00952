"""A graph-pruned ConvNeXt in timm's layout (pruning_jax.io.export_timm over convnext_jax.export): timm builds the
model with the pruned per-stage `dims` and loads the weights strictly, its logits equal ours; per-block MLP widths,
which timm cannot build, are listed in the sidecar; our loader reads both back to the same model."""

import json

import numpy as np
import pytest
import torch
from pruning_helpers import random_variables

import pruning_jax
from convnext_jax import export
from core_jax.compute import Compute
from core_jax.errors import UserError
from core_jax.weights import flatten, sidecar_path
from pruning_jax import io, models


@pytest.fixture(scope='module')
def tiny():
  model = models.create('convnext', cfg=(8, 8, 16, 16), compute=Compute())  # convnext_digits' layout, tiny widths
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  return model, random_variables(model, x), x


def _same_weights(a, b):
  fa, fb = flatten(dict(a['params'])), flatten(dict(b['params']))
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_pruned_convnext_loads_into_timm_at_its_pruned_dims_and_back_into_ours(tiny, tmp_path):
  model, variables, x = tiny
  result = pruning_jax.prune(model, variables, x, ratio=0.5)  # every MLP keeps 4 x its stage width
  path = io.export_timm(str(tmp_path / 'pruned.safetensors'), result.model, result.variables)
  meta = json.load(open(sidecar_path(path)))
  assert meta['timm']['kwargs']['dims'] == [4, 4, 8, 8] and 'timm_cannot_build' not in meta
  assert meta['pruned']['widths'] == models.describe(result.model)['widths']
  timm_model = export.timm_model_for(path)  # timm.create_model(..., dims=[4, 4, 8, 8]); load_state_dict(strict=True)
  with torch.no_grad():
    theirs = timm_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = np.asarray(result.model.apply(result.variables, x, train=False)[0])
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
  loaded, loaded_vars = io.load_timm_export(path)
  assert models.describe(loaded) == models.describe(result.model)
  _same_weights(loaded_vars, result.variables)


def test_per_block_mlp_widths_are_listed_as_what_timm_cannot_build_and_still_load_back(tiny, tmp_path):
  model, variables, x = tiny
  result = pruning_jax.prune(model, variables, x, ratio={'stages_2_block_1/pwconv1/kernel:1': 0.25})
  path = io.export_timm(str(tmp_path / 'pruned.safetensors'), result.model, result.variables)
  meta = json.load(open(sidecar_path(path)))
  assert 'timm' not in meta
  assert meta['timm_cannot_build']['mlp_hidden'] == {'stages_2_block_1': {'hidden': 48, 'timm': 64}}
  assert meta['pruned']['loader'] == 'pruning_jax.io.load_timm_export(PATH)'
  loaded, loaded_vars = io.load_timm_export(path)
  assert models.describe(loaded) == models.describe(result.model)
  _same_weights(loaded_vars, result.variables)
  # weights of another architecture: the first mismatching key and both shapes
  meta['pruned']['widths'] = []
  json.dump(meta, open(sidecar_path(path), 'w'))
  with pytest.raises(UserError, match=r'stages_2_block_1/pwconv1/bias: the model has shape \(64,\) but .* has \(48,\)'):
    io.load_timm_export(path)
