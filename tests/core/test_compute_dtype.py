"""`config.compute_dtype` honoured by every line: bfloat16 activations and conv / matmul compute, float32 params,
losses and BatchNorm statistics, outputs close to the float32 model's; and each line's Task reads the option."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from cheap_init import init

from core_jax.compute import Compute
from core_jax.errors import UserError

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op), amplified by each normalization of small-variance
# features: these randomly initialized models' outputs differ from float32 by up to ~8% of their largest value
# (ConvNeXt 7.6e-2, whose 0.02-std head gives small logits). The bound is max|bf16 - fp32| / max|fp32|.
RELATIVE_TOLERANCE = 0.1


def _convnext(dtype):
  from convnext_jax import models  # pylint: disable=import-outside-toplevel

  model = models.create_model(
      'convnext_digits', depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), dtype=dtype, compute=dict(dwconv='xla')
  )
  x = jnp.ones((2, 16, 16, 3)) * jnp.linspace(-1, 1, 16)[:, None, None]
  return model, x, lambda out: out[0], lambda m: init(m, x)


def _pruning(dtype):
  from pruning_jax import models  # pylint: disable=import-outside-toplevel

  model = models.create('resnet_cifar', cfg=[6, 16, 16, 22, 32, 57], num_classes=10, dtype=dtype)  # pruned widths
  x = jnp.ones((2, 32, 32, 3)) * jnp.linspace(-1, 1, 32)[:, None, None]
  return model, x, lambda out: out[0], lambda m: init(m, x)


def _anytime(dtype):
  from anytime_jax import confidence, hrnet  # pylint: disable=import-outside-toplevel

  # exit 3 masks stage 4 (masked convs, RBF fill, aggregation in the bf16 model); two exits and the masked-dense
  # init (not the CPU's sparse one) keep the compile short
  model = hrnet.build(
      'w8_nano',
      num_classes=3,
      exits=(3, 4),
      exit_type='ee',
      tau=0.5,
      masked_stages=(4,),
      dtype=dtype,
      compute=confidence.for_backend(dict(masked_conv='dense')),
  )
  x = jnp.ones((2, 32, 32, 3)) * jnp.linspace(-1, 1, 32)[:, None, None]
  # variables drawn in numpy as the init draws them: compiling the HRNet's init, even at -O0, was ~9 s of CPU (a
  # fifth of the test)
  return model, x, lambda out: jnp.stack(out['logits']), lambda m: hrnet.random_variables(m, 32, 32)


def _dtypes_of(jaxpr, primitives=('conv_general_dilated', 'dot_general')) -> set:
  """Operand dtypes of every conv / matmul in a jaxpr, sub-jaxprs included (custom VJPs, jits, conds)."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in primitives:
      found.update(str(v.aval.dtype) for v in eqn.invars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          found |= _dtypes_of(inner, primitives)
  return found


@pytest.mark.slow  # a train step per line, each ~12 s or more on 2 cores
@pytest.mark.parametrize(
    'line',
    [_convnext, _pruning, _anytime],
    ids=['convnext', 'pruning', 'anytime'],
)
def test_bfloat16_train_step(line):
  model, x, logits_of, init_variables = line(jnp.bfloat16)
  model32 = line(jnp.float32)[0]
  # the init compiled like a run's (cheap_init: the default-level compile was most of the test), or drawn in numpy
  variables = init_variables(model32)
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
  rng = {'dropout': jax.random.PRNGKey(1)}

  def loss_fn(params, batch_stats, m):
    v = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
    out, new = m.apply(v, x, train=True, rngs=rng, mutable=['batch_stats'])
    logits = logits_of(out)
    return jnp.mean(jnp.square(logits.astype(jnp.float32) - 0.5)), (logits, new.get('batch_stats', {}))

  tx = optax.sgd(0.1)

  @jax.jit
  def step(params, batch_stats):
    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, model)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), stats, loss, logits, grads

  params, stats, loss, logits, grads = step(variables['params'], variables.get('batch_stats', {}))
  # the convs and matmuls ran in bfloat16 (forward and backward)
  jaxpr = jax.make_jaxpr(lambda p, s: jax.grad(lambda p: loss_fn(p, s, model)[0])(p))(
      variables['params'], variables.get('batch_stats', {})
  ).jaxpr
  assert _dtypes_of(jaxpr) == {'bfloat16'}
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  for tree in (params, grads, stats):
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(tree)} <= {jnp.dtype(jnp.float32)}
  if 'batch_stats' in variables:
    assert jax.tree_util.tree_leaves(stats)  # BN statistics were updated, in float32
  # the same step's outputs by the float32 model, at the same parameters
  logits32 = jax.jit(lambda p, s: loss_fn(p, s, model32)[1][0])(variables['params'], variables.get('batch_stats', {}))
  err = float(jnp.max(jnp.abs(logits.astype(jnp.float32) - logits32))) / float(jnp.max(jnp.abs(logits32)))
  assert err < RELATIVE_TOLERANCE, err


def test_every_task_reads_compute_dtype():
  """`--config.compute_dtype` reaches the model of every line's Task; an unknown value is a one-line error."""
  from anytime_jax.task import AnytimeSegTask  # pylint: disable=import-outside-toplevel
  from convnext_jax.task import ConvNeXtTask  # pylint: disable=import-outside-toplevel
  from core_jax.config import base_config  # pylint: disable=import-outside-toplevel
  from pruning_jax.task import PruningTask  # pylint: disable=import-outside-toplevel

  info = ml_collections.ConfigDict(dict(num_classes=10))

  def config(**model):
    c = base_config()
    c.compute_dtype = 'bfloat16'
    c.model.update(model)
    return c

  convnext = ConvNeXtTask(config(name='convnext_digits', drop_path_rate=0.0), info).build_model()
  pruning = PruningTask(config(name='resnet20'), info).build_model()
  anytime_cfg = config(arch='w8_nano', exits=(4,))
  anytime = AnytimeSegTask(anytime_cfg, info).build_model()
  assert [m.dtype for m in (convnext, pruning, anytime)] == [jnp.bfloat16] * 3
  assert pruning.compute == Compute(small_conv='matmul', channel_multiple=8)  # the policy reached it too
  bad = config(name='resnet20')
  bad.compute_dtype = 'float16'
  with pytest.raises(UserError, match='compute_dtype must be one of'):
    PruningTask(bad, info).build_model()
