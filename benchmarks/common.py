"""Shared helpers for the benchmark scripts: timing, machine facts, one JSON line per measurement.

Every benchmark runs each contender in its own fresh subprocess (`run_isolated`), so thread pools (XLA's,
PyTorch's OpenMP) never compete and peak memory (max RSS) belongs to one contender only.
"""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_calls(fn, *, warmup: int, repeats: int) -> dict:
  """Median/min seconds of `fn()` after `warmup` calls; the first call's time is reported as compile."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  for _ in range(max(0, warmup - 1)):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {'first_call_s': first, 'median_s': statistics.median(times), 'min_s': min(times), 'repeats': repeats}


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
  info = {'python': platform.python_version(), 'platform': platform.platform(), 'cpus': os.cpu_count()}
  for name in ('jax', 'flax', 'torch', 'timm', 'grain', 'numpy'):
    try:
      info[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      info[name] = None
  try:
    import jax  # pylint: disable=import-outside-toplevel
    info['jax_backend'] = jax.default_backend()
    info['device'] = str(jax.devices()[0].device_kind)
  except Exception:  # pylint: disable=broad-except
    pass
  return info


def emit(record: dict) -> None:
  """The machine-readable line a driver collects: `BENCH {json}`."""
  print('BENCH ' + json.dumps(record), flush=True)


def run_isolated(module: str, args: list, env: dict | None = None, timeout: int = 1800) -> list:
  """Runs `python -m module args` and returns the BENCH records it printed."""
  full_env = dict(os.environ)
  full_env.update({'PYTHONPATH': REPO, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout)
  if proc.returncode != 0:
    raise RuntimeError(f'{module} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}')
  return [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith('BENCH ')]
