"""The official ADP-C code as the oracle: same weights -> same logits per exit (EE / RH, with and without
confidence adaptivity), identical state-dict keys, and the same per-exit FLOPs as its own counter.

Runs only when ADPC_REPO names a checkout of github.com/liuzhuang13/anytime (e.g. `git clone` it, or
`git archive` of a mirror), since the official code is not part of this repo:

    ADPC_REPO=/path/to/anytime pytest tests/anytime/test_official_parity.py
"""

import contextlib
import importlib
import io
import os
import sys

import numpy as np
import pytest

REPO = os.environ.get('ADPC_REPO', '')
pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(REPO, 'lib', 'models', 'model_anytime.py')),
    reason='set ADPC_REPO to a checkout of liuzhuang13/anytime',
)

import jax  # noqa: E402
import torch  # noqa: E402

from anytime_jax import convert, flops, hrnet  # noqa: E402


class Cfg(dict):
  """The attribute + item access of the code's yacs config."""

  __getattr__ = dict.__getitem__


def official_module():
  if not hasattr(np, 'int'):
    np.int = int  # the released code uses np.int (removed in NumPy 1.24)
  lib = os.path.join(REPO, 'lib')
  if lib not in sys.path:
    sys.path.insert(0, lib)
  return importlib.import_module('models.model_anytime'), importlib.import_module('utils.modelsummary')


def official_config(arch, exit_type, tau, num_classes):
  a = hrnet.ARCHS[arch]

  def stage(n, modules):
    return Cfg(
        NUM_MODULES=modules,
        NUM_BRANCHES=n,
        BLOCK='BASIC',
        NUM_BLOCKS=[a.stage_blocks] * n,
        NUM_CHANNELS=a.channels(n),
        FUSE_METHOD='SUM',
    )

  extra = Cfg(
      EE_WEIGHTS=(1, 1, 1, 1),
      EARLY_DETACH=False,
      STAGE1=Cfg(
          NUM_MODULES=1,
          NUM_BRANCHES=1,
          BLOCK='BOTTLENECK',
          NUM_BLOCKS=[a.stage1_blocks],
          NUM_CHANNELS=[64],
          FUSE_METHOD='SUM',
      ),
      STAGE2=stage(2, a.stage_modules[0]),
      STAGE3=stage(3, a.stage_modules[1]),
      STAGE4=stage(4, a.stage_modules[2]),
  )
  return Cfg(
      MODEL=Cfg(EXTRA=extra),
      MASK=Cfg(USE=tau is not None, P=0.5, INTERPOLATION='rbf', CONF_THRE=tau or 0.0, CRIT='conf_thre', AGGR='copy'),
      EXIT=Cfg(TYPE='flex' if exit_type == 'rh' else 'original', INTER_CHANNEL=a.inter_channels, FINAL_CONV_KERNEL=1),
      DATASET=Cfg(NUM_CLASSES=num_classes),
  )


@pytest.mark.slow
@pytest.mark.parametrize('exit_type,ca', [('rh', True), ('ee', True), ('rh', False)])
def test_same_logits_keys_and_flops_as_the_official_code(exit_type, ca):
  model_anytime, modelsummary = official_module()
  torch.manual_seed(0)
  cfg = official_config('w8_tiny', exit_type, 0.5 if ca else None, 5)
  with contextlib.redirect_stdout(io.StringIO()):
    ref = model_anytime.HighResolutionNet(cfg)
  rng = np.random.RandomState(0)
  with torch.no_grad():  # weights of some size, random BN affine params and lambdas
    for m in ref.modules():
      if isinstance(m, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(m.weight)
        if m.bias is not None:
          torch.nn.init.uniform_(m.bias, -0.1, 0.1)
        if hasattr(m, 'Lambda'):
          m.Lambda.fill_(float(rng.uniform(1, 3)))
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.3, 0.8)
        m.bias.uniform_(-0.2, 0.2)
        m.momentum = 1.0
    for head in (ref.exit1, ref.exit2, ref.exit3, ref.last_layer):
      head[-1].weight.mul_(3.0)
    # BN statistics from one batch: normalised features vary from pixel to pixel, so do the confidences
    calib = torch.from_numpy(rng.randn(2, 3, 64, 128).astype(np.float32))
    ref.train()
    ref(calib)
    ref(calib)
  ref.eval()
  x = rng.randn(2, 3, 64, 128).astype(np.float32)
  xt = torch.from_numpy(x)
  with torch.no_grad():
    ref(xt)  # the code's first forward has no output sizes and uses random masks; the scripts run two
    outs = ref(xt)
    tau = None
    if ca:  # a threshold that lets about half of exit 1's pixels exit, with no confidence of any exit within
      # 1e-6 of it (a tie would flip with float rounding and change everything downstream)
      conf = np.unique(torch.softmax(outs[0], 1).max(1)[0].numpy().astype(np.float64))
      mid = len(conf) // 2
      candidates = sorted((i for i in range(len(conf) - 1) if conf[i + 1] - conf[i] > 1e-5), key=lambda i: abs(i - mid))
      for i in candidates[:100]:
        tau = float((conf[i] + conf[i + 1]) / 2)
        cfg.MASK['CONF_THRE'] = tau
        outs = ref(xt)
        gap = min(float((torch.softmax(o, 1).max(1)[0] - tau).abs().min()) for o in outs[:3])
        if gap > 1e-6:
          break
      assert gap > 1e-6
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  model = hrnet.build('w8_tiny', exit_type=exit_type, tau=tau, num_classes=5)
  xj = x.transpose(0, 2, 3, 1)
  variables = convert.external_to_variables(sd, hrnet.random_variables(model, 64, 128), 'official')
  exported = convert.variables_to_external(variables, 'official')
  assert set(exported) == {f'model.{k}' for k in sd} | {'loss.criterion.weight'}
  got, macs = jax.jit(lambda v, x: flops.apply_with_macs(model, v, x))(variables, xj)
  for a, b in zip(got['logits'], outs):
    # Relative to each exit's scale. With RBF-filled features through the EE exits, exit 4's logits reach 2e8 here,
    # and the float32 rounding of such sums differs between CPUs (an AMD EPYC gave 2e-4 relative at 4e6 against
    # an elementwise rtol of 1e-4): the bound must test the code, not the CPU. Measured on an Intel Xeon: 1.5e-6 to
    # 1.7e-6 of the scale at exits 1-3 (logits up to 5-30), 4.1e-6 at EE exit 4.
    b = b.numpy().transpose(0, 2, 3, 1)
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(np.asarray(a, np.float64) - b).max() <= 5e-5 * scale
  if ca:
    assert 0.2 < 1 - float(got['fractions'][1].mean()) < 0.8  # about half of the pixels exited at exit 1
  # the code's counter: run with stop_k, batch 1
  counted = []
  with torch.no_grad():
    ref(xt[:1])
    ref(xt[:1])
    for k in range(1, 5):
      setattr(ref, f'stop{k}', True)
      counted.append(modelsummary.get_model_summary(ref, xt[:1])[1]['flops'])
      delattr(ref, f'stop{k}')
  _, ours = jax.jit(lambda v, x: flops.apply_with_macs(model, v, x))(variables, xj[:1])
  np.testing.assert_allclose([float(ours[f'exit{k}'][0]) for k in range(1, 5)], counted, rtol=1e-6)
