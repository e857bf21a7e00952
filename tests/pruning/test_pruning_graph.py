"""pruning_jax.graph and pruning_jax.prune: channel groups traced from the jaxpr equal the part-1 families'
hand-written channel sets, follow concatenations, depthwise convs, ConvNeXt's stages and HRNet's fuse layers, and
name the op and parameter they cannot follow; the pruned model equals the masked original and is smaller.

Group derivation traces abstractly (jax.eval_shape variables, ShapeDtypeStruct inputs); variables that are run
come from numpy (`random_variables`), so only the applies compared compile."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pruning_jax
from anytime_jax import hrnet
from convnext_jax.models import ConvNeXt
from core_jax import cli, counting
from core_jax.compute import Compute
from core_jax.config import load_sibling
from core_jax.data import ops
from core_jax.errors import UserError
from core_jax.weights import flatten
from pruning_jax import graph, io, job, models, structured, surgery, task
from pruning_jax.models import densenet, preresnet

digits_convnext = load_sibling(__file__, '../../configs/pruning/digits_convnext.py')

# A tiny cfg per family (the ImageNet VGGs at 224x224, which their heads need: the trace is abstract).
TINY = {
    'vgg_l1': ((8, 'M', 8, 'M', 16, 'M', 16, 'M', 16), 32),
    'vgg_slimming': ((8, 'M', 8, 'M', 16, 'M', 16, 'M', 16), 32),
    'vgg_imagenet': ((8, 'M', 8, 'M', 8, 'M', 16, 'M', 16, 'M'), 224),
    'vgg_bn_imagenet': ((8, 'M', 8, 'M', 8, 'M', 16, 'M', 16, 'M', 24, 16), 224),
    'vgg_gap_imagenet': ((8, 'M', 8, 'M', 8, 'M', 16, 'M', 16), 224),  # its head pools a 14x14 map
    'resnet_cifar': ((8, 8, 8), 32),
    'preresnet': (preresnet.default_cfg(11), 32),
    'densenet': (densenet.default_cfg(7), 32),
    'resnet34': (None, 64),  # any input size: global pooling before the classifier
    'resnet50': (None, 64),
}


def abstract(model, size):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x), x


def traced_by_member(groups):
  out = {}
  for g in groups:
    for m in g.members:
      out.setdefault(m.key, []).append(g)
  return out


def positions(group):
  return {m.key: m.positions for m in group.members}


def test_every_family_has_a_tiny_cfg():
  assert set(TINY) == set(models.FAMILIES)


@pytest.mark.parametrize('family', models.FAMILIES)
def test_traced_groups_equal_hand_written_sets(family):
  cfg, size = TINY[family]
  model = models.create(family, cfg=cfg) if cfg is not None else models.create(family)
  variables, x = abstract(model, size)
  groups = graph.channel_groups(model, variables, x, train=False)
  shapes = {(c, p): np.shape(v) for c, tree in variables.items() for p, v in flatten(dict(tree)).items()}
  by_member = traced_by_member(groups)
  sets = surgery.channel_sets(model)
  assert sets
  for cs in sets:
    if cs.kind == 'conv':
      # one traced group, exactly the hand-written members, channel k at rows [k * repeat, (k + 1) * repeat)
      (group,) = by_member[('params', f'{cs.conv}/kernel', len(shapes[('params', f'{cs.conv}/kernel')]) - 1)]
      expected = {}
      for collection, path, axis, repeat in cs.members:
        axis = axis % len(shapes[(collection, path)])
        expected[(collection, path, axis)] = tuple(tuple(range(k * repeat, (k + 1) * repeat)) for k in range(cs.width))
      assert group.prunable, group.reason
      assert group.channels == cs.width
      assert positions(group) == expected, cs.name
    else:
      # a channel selection reads the full stream: the traced groups on the consumer's in-axis cover every
      # channel once, each group's channels in order at its offset (concatenation), and the BN before the
      # selection carries the same channel at the same index
      ((collection, path, axis, _),) = cs.members
      key = (collection, path, axis % len(shapes[(collection, path)]))
      covered = []
      for group in by_member[key]:
        assert group.prunable, group.reason
        read = dict(positions(group))[key]
        assert group.member(*key).span() is not None, (cs.name, group.name)  # in order, at one offset
        covered += [p for ps in read for p in ps]
        if cs.bn is not None:
          assert dict(positions(group))[('params', f'{cs.bn}/scale', 0)] == read, cs.name
      assert sorted(covered) == list(range(cs.width)), cs.name


# -- a small model defined only here: a residual block with a concatenation and a depthwise conv, widths literal --
class _Block(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(24, (3, 3), use_bias=False)(x)))
    y = nn.Conv(24, (3, 3), feature_group_count=24)(y)  # depthwise: in and out coupled
    y = jnp.concatenate([y, nn.Conv(8, (1, 1))(x)], axis=-1)  # offsets 0 and 24 in the next conv's input
    return x + nn.Conv(16, (1, 1))(y)  # residual: the stem's channels and this conv's outputs are one group


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = _Block()(nn.Conv(16, (3, 3))(x), train)
    return nn.Dense(10)(jnp.mean(nn.relu(x), axis=(1, 2)))


def random_variables(model, *inputs, seed=0, **kw):
  """Variables of `model` filled from numpy (no init program to compile): weights ~ N(0, 0.3^2) around the
  init's scale-free layout, BN statistics mean ~ N(0, 0.1^2), var ~ U(0.5, 1.5)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, **kw))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    scale = 0.1 if name == 'mean' else 0.3
    return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def small_net():
  model = _Net()
  x = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
  return model, random_variables(model, x), x


def test_small_model_groups_follow_residual_concat_and_depthwise(small_net):
  model, variables, x = small_net
  groups = {g.name: g for g in graph.channel_groups(model, variables, x, train=False)}
  stream = groups['Conv_0/kernel:3']
  assert stream.prunable and stream.channels == 16
  assert {m.key for m in stream.members} == {
      ('params', 'Conv_0/kernel', 3),
      ('params', 'Conv_0/bias', 0),
      ('params', '_Block_0/Conv_0/kernel', 2),
      ('params', '_Block_0/Conv_2/kernel', 2),
      ('params', '_Block_0/Conv_3/kernel', 3),  # the residual add couples the block's output conv
      ('params', '_Block_0/Conv_3/bias', 0),
      ('params', 'Dense_0/kernel', 0),
  }
  inner = groups['_Block_0/Conv_0/kernel:3']
  assert {m.key for m in inner.members} == {
      ('params', '_Block_0/Conv_0/kernel', 3),
      *(('params', f'_Block_0/BatchNorm_0/{n}', 0) for n in ('scale', 'bias')),
      *(('batch_stats', f'_Block_0/BatchNorm_0/{n}', 0) for n in ('mean', 'var')),
      ('params', '_Block_0/Conv_1/kernel', 3),  # depthwise out = in
      ('params', '_Block_0/Conv_1/bias', 0),
      ('params', '_Block_0/Conv_3/kernel', 2),
  }
  side = groups['_Block_0/Conv_2/kernel:3']
  assert side.member('params', '_Block_0/Conv_3/kernel', 2).span() == (24, 1)  # after the 24 depthwise outputs
  assert not groups['Dense_0/kernel:1'].prunable and 'fixed model output' in groups['Dense_0/kernel:1'].reason


def _masked_original(model, variables, x, ratio, criterion='l1', **kw):
  groups = graph.channel_groups(model, variables, x, train=False)
  keep, _ = structured.choose(groups, structured.importance(groups, variables, criterion), ratio, **kw)
  mask = structured.channel_mask(variables['params'], structured.dropped_positions(groups, keep))
  params = jax.tree_util.tree_map(lambda a, m: a * m, variables['params'], mask)
  return model.apply({**variables, 'params': params}, x, train=False)


def test_small_model_pruned_equals_masked_and_is_smaller(small_net):
  model, variables, x = small_net
  result = pruning_jax.prune(model, variables, x, ratio=0.5, criterion='l1')
  widths = dict(result.model.widths)
  assert widths[('_Block_0', 'Conv_1')] == (('features', 12), ('feature_group_count', 12))  # literal 24 -> 12
  assert widths[('Conv_0',)] == (('features', 8),)
  out = result.model.apply(result.variables, x, train=False)
  np.testing.assert_allclose(out, _masked_original(model, variables, x, 0.5), atol=1e-5, rtol=1e-5)
  params = counting.count_params(variables['params']), counting.count_params(result.variables['params'])
  macs = [
      counting.count_macs(m, x, variables=v, train=False)
      for m, v in ((model, variables), (result.model, result.variables))
  ]
  assert params[1] < 0.4 * params[0] and macs[1] < 0.4 * macs[0], (params, macs)


def test_pruning_a_pruned_model_again_is_a_smaller_model_equal_to_masked(small_net):
  model, variables, x = small_net
  once = pruning_jax.prune(model, variables, x, ratio=0.5)
  twice = pruning_jax.prune(once.model, once.variables, x, ratio=0.5)
  assert twice.model.base is model  # one wrapper over the original module, both prunings' widths in its table
  widths = dict(twice.model.widths)
  assert widths[('_Block_0', 'Conv_1')] == (('features', 6), ('feature_group_count', 6))  # 24 -> 12 -> 6
  assert widths[('Conv_0',)] == (('features', 4),)
  out = twice.model.apply(twice.variables, x, train=False)
  np.testing.assert_allclose(out, _masked_original(once.model, once.variables, x, 0.5), atol=1e-5, rtol=1e-5)
  sizes = [counting.count_params(r.variables['params']) for r in (once, twice)]
  assert sizes[1] < 0.4 * sizes[0], sizes
  rebuilt = type(twice.model)(model, twice.model.widths)  # the table alone rebuilds it
  np.testing.assert_allclose(rebuilt.apply(twice.variables, x, train=False), out, atol=1e-6)


def test_ratio_that_empties_a_group_keeps_its_strongest_channel(small_net):
  model, variables, x = small_net
  groups = graph.channel_groups(model, variables, x, train=False)
  scores = structured.importance(groups, variables, 'l1')
  keep, notes = structured.choose(groups, scores, 0.99)
  side = '_Block_0/Conv_2/kernel:3'
  assert keep[side] == [int(np.argmax(scores[side]))]
  assert any(n.startswith(side) and 'keeps its strongest 1' in n for n in notes)
  result = pruning_jax.prune(model, variables, x, ratio={side: 0.99})  # the report says so too
  assert result.report['notes'] == [f'{side}: ratio 0.99 would keep 0 of 8 channels; keeps its strongest 1']
  assert [g['kept'] for g in result.report['groups'] if g['name'] == side] == [1]


def test_weights_of_another_architecture_name_the_first_mismatching_key_and_both_shapes(small_net, tiny_convnext):
  model, variables, x = small_net
  with pytest.raises(
      UserError,
      match=r'^params/Conv_0/bias: the model has shape \(16,\) but the weights tree has \(8,\) '
      r'\(not weights of this _Net\)$',
  ):
    pruning_jax.prune(model, pruning_jax.prune(model, variables, x).variables, x)
  with pytest.raises(
      UserError,
      match=r'^the weights tree has no params/Conv_0/bias \(the model needs shape \(16,\)\) '
      r'\(not weights of this _Net\)$',
  ):
    pruning_jax.prune(model, tiny_convnext[1], x)


def test_criteria_and_scopes_rank_channels(small_net):
  model, variables, x = small_net
  groups = graph.channel_groups(model, variables, x, train=False)
  name = '_Block_0/Conv_0/kernel:3'
  bn = np.abs(np.asarray(variables['params']['_Block_0']['BatchNorm_0']['scale']))
  keep, _ = structured.choose(groups, structured.importance(groups, variables, 'bn_scale'), {name: 0.5})
  assert keep == {name: sorted(np.argsort(-bn)[:12].tolist())}  # Network Slimming: the largest |gamma|
  l1, l2 = (structured.importance(groups, variables, c)[name] for c in ('l1', 'l2'))
  p = jax.tree_util.tree_map(np.asarray, variables['params']['_Block_0'])
  parts = [  # every params member of the group, per channel (the BN statistics are not weights)
      p['Conv_0']['kernel'].reshape(-1, 24),
      p['BatchNorm_0']['scale'][None],
      p['BatchNorm_0']['bias'][None],
      p['Conv_1']['kernel'].reshape(-1, 24),
      p['Conv_1']['bias'][None],
      p['Conv_3']['kernel'][0, 0, :24].T,
  ]
  np.testing.assert_allclose(l1, sum(np.abs(a).sum(0) for a in parts), rtol=1e-5)
  np.testing.assert_allclose(l2, np.sqrt(sum(np.square(a).sum(0) for a in parts)), rtol=1e-5)
  keep_global, _ = structured.choose(groups, structured.importance(groups, variables, 'l1'), 0.5, scope='global')
  total = sum(g.channels for g in groups if g.prunable)
  assert sum(len(k) for k in keep_global.values()) == total - total // 2
  grads = structured.taylor_grads(model, variables, [(x, np.array([1, 2]))])
  taylor = structured.importance(groups, variables, 'taylor', grads)[name]
  assert taylor.shape == (24,) and np.all(taylor >= 0) and np.any(taylor > 0)
  with pytest.raises(UserError, match='unknown pruning criterion'):
    structured.importance(groups, variables, 'l3')
  with pytest.raises(UserError, match=r'in \[0, 1\)'):
    structured.choose(groups, structured.importance(groups, variables, 'l1'), 1.0)


# -- ConvNeXt: stage widths (LayerNorms, downsampling convs, depthwise convs, layer scales) and MLP hidden widths --
@pytest.fixture(scope='module')
def tiny_convnext():
  model = ConvNeXt(depths=(1, 1), dims=(8, 16), num_classes=10, kernel_size=3, patch_size=2, compute=Compute())
  x = np.random.default_rng(2).standard_normal((2, 8, 8, 3)).astype(np.float32)
  return model, random_variables(model, x), x


def test_convnext_groups(tiny_convnext):
  model, variables, x = tiny_convnext
  groups = {g.name: g for g in graph.channel_groups(model, variables, x, train=False)}
  block = 'stages_0_block_0'
  stage0 = groups['stem_conv/kernel:3']
  assert stage0.prunable and stage0.channels == 8
  assert {m.key for m in stage0.members} == {
      ('params', 'stem_conv/kernel', 3),
      ('params', 'stem_conv/bias', 0),
      ('params', 'stem_norm/scale', 0),
      ('params', 'stem_norm/bias', 0),
      ('params', f'{block}/dwconv/kernel', 3),
      ('params', f'{block}/dwconv/bias', 0),
      ('params', f'{block}/norm/scale', 0),
      ('params', f'{block}/norm/bias', 0),
      ('params', f'{block}/pwconv1/kernel', 0),
      ('params', f'{block}/pwconv2/kernel', 1),
      ('params', f'{block}/pwconv2/bias', 0),
      ('params', f'{block}/gamma', 0),  # layer scale
      ('params', 'downsample_1/norm/scale', 0),
      ('params', 'downsample_1/norm/bias', 0),
      ('params', 'downsample_1/conv/kernel', 2),
  }
  hidden = groups[f'{block}/pwconv1/kernel:1']
  assert hidden.channels == 32 and {m.key for m in hidden.members} == {
      ('params', f'{block}/pwconv1/kernel', 1),
      ('params', f'{block}/pwconv1/bias', 0),
      ('params', f'{block}/pwconv2/kernel', 0),
  }
  stage1 = groups['downsample_1/conv/kernel:3']
  assert stage1.prunable and ('params', 'head/kernel', 0) in {m.key for m in stage1.members}
  assert not groups['head/kernel:1'].prunable  # the logits


def test_convnext_pruned_runs_smaller_and_hidden_widths_equal_masked(tiny_convnext):
  model, variables, x = tiny_convnext
  result = pruning_jax.prune(model, variables, x, ratio=0.5)
  logits, features = jax.eval_shape(lambda v: result.model.apply(v, x, train=False), result.variables)
  assert logits.shape == (2, 10) and features['stage_0'].shape[-1] == 4 and features['stage_1'].shape[-1] == 8
  macs = [
      counting.count_macs(m, x, variables=v, train=False)
      for m, v in ((model, variables), (result.model, result.variables))
  ]
  assert macs[1] < 0.35 * macs[0], macs
  # LayerNorm statistics run over the stage width, so only the MLP hidden widths compare to a masked original
  hidden = {f'stages_{i}_block_0/pwconv1/kernel:1': 0.5 for i in (0, 1)}
  result = pruning_jax.prune(model, variables, x, ratio=hidden)
  assert [g['kept'] for g in result.report['groups'] if g['name'] in hidden] == [16, 32]
  np.testing.assert_allclose(
      result.model.apply(result.variables, x, train=False)[0],
      _masked_original(model, variables, x, hidden)[0],
      atol=1e-5,
      rtol=1e-5,
  )


# -- what the tracer cannot follow --
class _Shuffle(nn.Module):
  """ShuffleNet's channel shuffle: a reshape splitting the channel axis, a transpose, a reshape merging it."""

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.Conv(8, (1, 1), name='conv')(x)
    n, h, w, c = y.shape
    y = y.reshape(n, h, w, 2, c // 2).transpose(0, 1, 2, 4, 3).reshape(n, h, w, c)
    return nn.Dense(4, name='head')(jnp.mean(y, axis=(1, 2)))


def test_channel_mixing_reshape_is_unprunable_naming_op_and_parameter():
  model = _Shuffle()
  x = np.ones((1, 4, 4, 3), np.float32)
  variables = random_variables(model, x)
  (conv,) = [g for g in graph.channel_groups(model, variables, x, train=False) if g.name == 'conv/kernel:3']
  assert not conv.prunable
  assert 'reshape (1, 4, 4, 8) -> (1, 4, 4, 2, 4) splits a channel axis' in conv.reason and 'conv/kernel' in conv.reason
  with pytest.raises(UserError, match=r'^no prunable channel group in _Shuffle: reshape .* conv/kernel$'):
    pruning_jax.prune(model, variables, x)


# -- the runner's side: a graph-pruned model is described, saved, rebuilt and re-initialized at its widths --
def test_graph_pruned_convnext_round_trips_through_its_sidecar(tmp_path):
  model = models.create('convnext', cfg=(8, 8, 16, 16), compute=Compute())
  x = np.zeros((1, 32, 32, 3), np.float32)
  result = pruning_jax.prune(model, random_variables(model, x), x, ratio=0.5)
  d = models.describe(result.model)
  assert (d['family'], d['cfg'], d['num_classes']) == ('convnext', [8, 8, 16, 16], 10)
  assert ['stem_conv', [['features', 4]]] in d['widths']
  # load_pruned rebuilds the model from the sidecar and merges the weights into a fresh abstract init of it, so
  # Scratch-E / Scratch-B initialize at the pruned widths (a mismatch is a one-line error naming the key)
  path = io.save_pruned(str(tmp_path / 'pruned.safetensors'), result.model, result.variables)
  loaded, variables = io.load_pruned(path)
  assert models.describe(loaded) == d
  assert jax.tree_util.tree_map(np.shape, variables['params']) == jax.tree_util.tree_map(
      np.shape, result.variables['params']
  )


# -- the line's ConvNeXts compute as convnext_jax's own (on CPU: the C++ depthwise-conv and LayerNorm kernels) --
def test_line_convnexts_carry_convnexts_own_policy_plus_the_lines_fields():
  from convnext_jax import ops  # pylint: disable=import-outside-toplevel
  from pruning_jax.models import layers  # pylint: disable=import-outside-toplevel

  own = ops.for_backend()
  c = digits_convnext.get_config()
  x = np.zeros((1, 32, 32, 3), np.float32)
  created = models.create('convnext', cfg=(8, 8, 16, 16))
  built = {
      'create': created,
      'runner': task.build_from_config(c.model, 10, compute=c.get('compute')),  # as PruningTask.build_model
      'prune phase': job.large_model(c, 0, 10),
      'prune': pruning_jax.prune(created, random_variables(created, x, train=False), x, ratio=0.5).model.base,
  }
  for how, model in built.items():
    got = model.compute
    assert (got.dwconv, got.patch_conv, got.fusion_barriers) == (own.dwconv, own.patch_conv, own.fusion_barriers), how
    assert ops.uses_native_kernels(got) == ops.uses_native_kernels(own), how
    assert got.channel_multiple == layers.AUTO['channel_multiple'], how  # the line's own fields still apply
  assert own.dwconv == ops.resolve_dwconv_impl('auto') and own.dwconv != 'xla'  # the CPU's fast path, not XLA's
  # config.compute reaches the ConvNeXt's fields; the other families still refuse what they cannot honour
  assert task.build_from_config(c.model, 10, compute={'dwconv': 'xla'}).compute.dwconv == 'xla'
  c.compute.dwconv = 'xla'
  assert job.large_model(c, 0, 10).compute.dwconv == 'xla'
  assert models.create('resnet56').compute == layers.for_backend()
  with pytest.raises(UserError, match=r"^compute.dwconv='native': the pruning line has no use for it; leave it auto$"):
    models.create('resnet56', compute={'dwconv': 'native'})


def _pruned_convnext(cfg, ratio, size):
  """(the line's pruned `convnext` at `cfg`, the same under the plain-XLA policy, its variables, a batch)."""
  model = models.create('convnext', cfg=cfg)
  x = np.random.default_rng(3).standard_normal((2, size, size, 3)).astype(np.float32)
  result = pruning_jax.prune(model, random_variables(model, x[:1], train=False), x[:1], ratio=ratio)
  fast, plain = result.model, structured.plain_policy(result.model)
  assert plain.base.compute == Compute() and fast.base.compute != Compute()
  return fast, plain, result.variables, x


@pytest.mark.parametrize(
    'cfg,ratio,size',
    [(None, 0.5, 32), ((8, 8, 16, 16), 0.3, 16)],
    ids=['demo_half', 'odd_widths'],  # the demo's convnext at the demo's ratio; widths 5/5/11/11, MLPs 22/44
)
def test_pruned_convnext_under_the_lines_policy_equals_plain_xla(cfg, ratio, size):
  fast, plain, variables, x = _pruned_convnext(cfg, ratio, size)
  (la, fa), (lb, fb) = (jax.jit(m.apply, static_argnames='train')(variables, x, train=False) for m in (fast, plain))
  np.testing.assert_allclose(la, lb, atol=1e-5, rtol=1e-5)
  for key in fa:
    np.testing.assert_allclose(fa[key], fb[key], atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # ~16-22 s on 2 cores, most of it compiling the plain-XLA backward
def test_pruned_convnext_trains_with_the_plain_xla_gradients():
  """Training through the line's paths (C++ kernels' backward at odd widths, drop path on, as the runner's step)."""
  fast, plain, variables, x = _pruned_convnext((8, 8, 16, 16), 0.3, 16)

  def grads(m):
    loss = lambda p: jnp.mean(m.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})[0] ** 2)
    return jax.jit(jax.grad(loss))(variables['params'])

  for a, b in zip(jax.tree_util.tree_leaves(grads(fast)), jax.tree_util.tree_leaves(grads(plain))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_digits_convnext_config_resolves_its_phases_and_checks_graph_fields():
  c = digits_convnext.get_config()
  job.check_config(c)
  assert [p.name for p in job.phases_for(c)] == [f'seed0/{p}' for p in job.PHASES]
  widths = [['stem_conv', [['features', 16]]], ['downsample_1/conv', [['features', 32]]]]
  prune = {
      'export': '/x/pruned.safetensors',
      'pruned_model': {'family': 'convnext', 'cfg': [32, 64, 128, 256], 'selections': None, 'widths': widths},
      'macs_large': 400,
      'macs': 100,
  }
  ft = job.finetune_config(c, 0, prune)
  assert (ft.optimizer.name, ft.optimizer.schedule, ft.optimizer.lr, ft.num_epochs) == ('adamw', 'constant', 4e-4, 2)
  assert ft.model.widths == widths and ft.init_from == prune['export']
  sb = job.scratch_config(c, 0, prune, 'scratch_b')
  assert sb.num_epochs == 2 * c.num_epochs and sb.model.widths == widths and not sb.init_from  # 4x MACs, cap 2x
  model = task.build_from_config(sb.model, 10)
  assert dict(model.widths)[('stem_conv',)] == (('features', 16),)
  c.prune.criterion = 'taylor'
  with pytest.raises(UserError, match='prune.criterion must be one of l1, l2, bn_scale'):
    job.check_config(c)
  c.prune.criterion, c.prune.ratio = 'l1', 1.0
  with pytest.raises(UserError, match=r'prune.ratio must be in \[0, 1\)'):
    job.check_config(c)


@pytest.mark.parametrize(
    'spec', ['digits_convnext_magnitude.py', 'convnext_tiny_imagenet.py:l1', 'convnext_tiny_imagenet.py:magnitude']
)
def test_convnext_magnitude_and_imagenet_configs_check_and_resolve_their_phases(spec):
  c = cli.load_config_file(os.path.join(os.path.dirname(digits_convnext.__file__), spec))
  job.check_config(c)
  assert [p.name for p in job.phases_for(c)] == [f'seed0/{p}' for p in job.PHASES]
  for transforms in (c.data.train_transforms, c.data.eval_transforms):
    ops.build_transforms(transforms)
  large = task.build_from_config(c.model, None)
  assert models.family_of(large) == ('convnext' if spec.startswith('digits') else 'convnext_tiny')
  prune = {
      'export': '/x/pruned.safetensors',
      'masked_export': '/x/pruned.safetensors',
      'mask': '/x/mask.safetensors',
      'scratch_init': '/x/scratch_init.safetensors',
      'pruned_model': models.describe(large),
      'macs_large': 400,
      'macs': 100,
  }
  ft = job.finetune_config(c, 0, prune)
  assert (ft.optimizer.name, ft.optimizer.schedule) == ('adamw', 'constant')
  sb = job.scratch_config(c, 0, prune, 'scratch_b')
  assert sb.num_epochs == 2 * c.num_epochs  # 4x fewer MACs, capped at 2x
  if c.prune.method == 'magnitude':  # the dense shape under the mask, from the model's own init
    assert c.scratch.init == 'model' and (ft.mask.path, sb.mask.path) == (prune['mask'], prune['mask'])
    assert sb.init_from == prune['scratch_init']
  if spec.startswith('convnext_tiny'):
    assert (c.batch_size, c.num_epochs, c.optimizer.lr, c.mixup.mixup_alpha) == (4096, 300, 4e-3, 0.8)
    assert (ft.num_epochs, ft.optimizer.lr) == (30, 5e-5)


def test_hrnet_branch_widths_run_through_the_fuse_layers():
  model = hrnet.build('w8_tiny', num_classes=5, exits=(4,), compute=Compute(), fuse_upsample='nearest')
  x = np.zeros((1, 32, 32, 3), np.float32)
  groups = {g.name: g for g in graph.channel_groups(model, hrnet.random_variables(model, 32, 32), x, train=False)}
  branch1 = groups['transition1_1_0/conv/kernel:3']  # branch 1 (16 channels) from stage 2 on
  assert branch1.prunable and branch1.channels == 16
  keys = {m.key for m in branch1.members}
  for stage in ('stage2_0', 'stage3_0', 'stage4_0'):
    assert ('params', f'{stage}/branch1_0/conv2/kernel', 3) in keys  # each module's residual block output
    assert ('params', f'{stage}/fuse1_0_0/conv/kernel', 3) in keys  # branch 0 -> 1, strided conv output
    assert ('params', f'{stage}/fuse0_1/conv/kernel', 2) in keys  # branch 1 -> 0, 1x1 conv then upsampled
  assert ('params', 'stage4_0/fuse1_3/conv/kernel', 3) in keys  # branch 3 -> 1
  assert branch1.member('params', 'last_layer/conv0/kernel', 2).span() == (8, 1)  # after branch 0 in the concat
  # the output is {'fractions', 'logits'}: the leaf under 'logits' is the fixed one
  assert groups['last_layer/conv3/kernel:3'].reason.startswith('a fixed model output')
