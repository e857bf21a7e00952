"""The sparse masked conv (compute.masked_conv='sparse') as a pod or cluster runs it: the batch split over 8
devices of one Mesh (core_jax.parallel's batch sharding; XLA_FLAGS=--xla_force_host_platform_device_count=8 in a
subprocess) gives every exit's logits of masked-dense on the same sharded batch and of sparse on one device (fp32,
max abs diff <= 1e-4, the same argmax except at near-ties, the same computed fractions); and each example's logits
in the batch are those of the example alone (batch semantics stay per example: the batch's mixed masks, one example
keeping every pixel and another nearly none, change how a segment computes, `confidence.segment_kind`, never what).

Worker: python tests/anytime/test_sparse_sharded.py ONE_OR_EIGHT OUT.npz [TAUS.npy]
"""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICES = 8
QUANTILES = (0.3, 0.6, 0.85, 0.995)  # of exit 1's confidences: the batch keeps about 30 / 60 / 85 / 99.5 % (plain)


def batch_images() -> np.ndarray:
  """8 examples, 32 x 48 (not square, a multiple of 32 on one side only): one image, flipped and scaled. Scaled by 20
  its logits grow, so its pixels are far more confident: a threshold keeps nearly every pixel of the unscaled
  examples and few of the scaled ones."""
  rng = np.random.RandomState(5)
  image = rng.randn(32, 48, 3).astype(np.float32)
  scales = (1.0, 20.0, 1.0, 3.0, 20.0, 0.5, 8.0, 1.0)
  flips = (image, image[::-1], image[:, ::-1], image[::-1, ::-1])
  return np.stack([s * flips[i % 4] for i, s in enumerate(scales)])


def separated_taus(conf: np.ndarray) -> np.ndarray:
  """Thresholds near QUANTILES of `conf`, each the midpoint of the widest gap between sorted confidences near it:
  no pixel's confidence lies within rounding of a threshold, so two programs whose exit-1 logits differ in the last
  bits (another batch split, another summation order) keep the same pixels."""
  values = np.sort(conf.reshape(-1))
  taus = []
  for q in QUANTILES:
    i = int(q * (values.size - 1))
    near = np.arange(max(0, i - 30), min(values.size - 1, i + 30))
    j = near[np.argmax(values[near + 1] - values[near])]
    taus.append((values[j] + values[j + 1]) / 2)
  return np.asarray(taus + [1.0], np.float32)


def worker(devices: str, out: str, taus_path: str = '') -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from test_sparse_conv import tiny_hrnets  # pylint: disable=import-outside-toplevel

  from core_jax import parallel  # pylint: disable=import-outside-toplevel

  assert jax.device_count() == int(devices), jax.devices()
  images = batch_images()
  dense, sparse, variables = tiny_hrnets(jnp.asarray(images), np.random.RandomState(0))
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'mesh': {'fsdp': 1}}))
  shard, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  x = jax.device_put(images, shard)
  assert len(x.sharding.device_set) == jax.device_count()

  def program(model):  # the eval step's layout: variables replicated, the batch split over the devices
    return jax.jit(lambda v, x: model.apply(v, x), in_shardings=(replicated, shard))

  with_tau = lambda tau: {**variables, 'constants': {'tau': jnp.float32(tau)}}
  run_sparse, result = program(sparse), {}
  if taus_path:
    taus = np.load(taus_path)
  else:
    conf1 = jax.nn.softmax(program(dense)(with_tau(1.0), x)['logits'][0]).max(-1)
    taus = separated_taus(np.asarray(conf1))
  result['taus'] = taus
  run_dense = program(dense) if jax.device_count() > 1 else None
  run_alone = jax.jit(lambda v, x: sparse.apply(v, x)) if jax.device_count() == 1 else None
  for t, tau in enumerate(taus):
    got = run_sparse(with_tau(tau), x)
    result.update({f'sparse/{t}/{k}': np.asarray(a) for k, a in enumerate(got['logits'])})
    result[f'sparse/{t}/fractions'] = np.asarray(got['fractions'])
    if run_dense is not None:  # masked-dense on the same sharded batch
      want = run_dense(with_tau(tau), x)
      result.update({f'dense/{t}/{k}': np.asarray(a) for k, a in enumerate(want['logits'])})
      result[f'dense/{t}/fractions'] = np.asarray(want['fractions'])
    if run_alone is not None:  # each example on its own (batch 1: one compiled program for the 8)
      for i in range(images.shape[0]):
        alone = run_alone(with_tau(tau), images[i : i + 1])
        result.update({f'alone/{t}/{k}/{i}': np.asarray(a)[0] for k, a in enumerate(alone['logits'])})
  np.savez(out, **result)


def _run_worker(devices: int, out: str, taus: str = '') -> dict:
  import xla_test_flags  # pylint: disable=import-outside-toplevel  (tests/: not on this file's path as a script)

  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, 'tests', 'anytime'), os.environ.get('PYTHONPATH', '')]),
      XLA_FLAGS=xla_test_flags.with_devices(devices),
  )
  args = [sys.executable, os.path.abspath(__file__), str(devices), out] + ([taus] if taus else [])
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def _assert_exits_equal(want: dict, got: dict, prefix_want: str, prefix_got: str, t: int, what: str) -> None:
  from test_sparse_conv import assert_exits_equal  # pylint: disable=import-outside-toplevel

  n = len([k for k in want if k.startswith(f'{prefix_want}/{t}/') and k.split('/')[-1].isdigit()])
  assert n == 4, sorted(want)
  assert_exits_equal(
      [want[f'{prefix_want}/{t}/{k}'] for k in range(n)], [got[f'{prefix_got}/{t}/{k}'] for k in range(n)], what
  )


@pytest.mark.slow  # two subprocesses compiling a tiny HRNet 2-3 times each: ~60 s idle
def test_sparse_sharded_over_8_devices_equals_masked_dense_and_one_device(tmp_path):
  one = _run_worker(1, str(tmp_path / 'one.npz'))
  np.save(tmp_path / 'taus.npy', one['taus'])
  eight = _run_worker(DEVICES, str(tmp_path / 'eight.npz'), str(tmp_path / 'taus.npy'))
  mixed = []
  for t, tau in enumerate(one['taus']):
    # sharded sparse = sharded masked-dense (same process) = single-device sparse, every exit
    _assert_exits_equal(eight, eight, 'dense', 'sparse', t, f'8 devices, sparse vs masked-dense, tau={tau}')
    _assert_exits_equal(one, eight, 'sparse', 'sparse', t, f'sparse on 8 devices vs 1, tau={tau}')
    np.testing.assert_array_equal(eight[f'sparse/{t}/fractions'], eight[f'dense/{t}/fractions'])
    np.testing.assert_array_equal(eight[f'sparse/{t}/fractions'], one[f'sparse/{t}/fractions'])
    # per example: an example's logits in the batch are its logits alone (whatever the others keep)
    for i in range(DEVICES):
      batch = {f'sparse/{t}/{k}': one[f'sparse/{t}/{k}'][i] for k in range(4)}
      alone = {f'alone/{t}/{k}': one[f'alone/{t}/{k}/{i}'] for k in range(4)}
      _assert_exits_equal(alone, batch, 'alone', 'sparse', t, f'example {i} alone vs in the batch, tau={tau}')
    fractions = one[f'sparse/{t}/fractions']  # (exits, batch)
    mixed.append(bool(fractions[1].max() > 0.9 and fractions[1].min() < 0.2))
  # the thresholds below 1 mix the batch: one example keeps (nearly) every pixel after exit 1, another few
  assert any(mixed[:-1]), [one[f'sparse/{t}/fractions'][1] for t in range(len(mixed))]
  assert np.all(one[f'sparse/{len(mixed) - 1}/fractions'] == 1)  # tau 1: every pixel


if __name__ == '__main__':
  sys.path.insert(0, REPO)
  worker(*sys.argv[1:])
