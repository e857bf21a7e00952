"""Shared helpers for the benchmark scripts: timing, machine facts, one JSON line per measurement.

Every benchmark runs each contender in its own subprocess, so thread pools (XLA's, PyTorch's OpenMP) never
compete and peak memory (max RSS) belongs to one contender only: `run_isolated` runs one to completion,
`interleaved` keeps several alive and times them in turns (a shared VM's speed drifts by 10-20% over
minutes; taking turns step by step exposes every contender to the same drift).
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seconds(fn) -> float:
  """Wall seconds of one `fn()`."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def warm_up(fn, warmup: int) -> float:
  """Calls `fn()` `warmup` times (at least once); returns the first call's seconds (compile included)."""
  first = seconds(fn)
  for _ in range(warmup - 1):
    fn()
  return first


def time_calls(fn, *, warmup: int, repeats: int) -> dict:
  """Median/min seconds of `fn()` after `warmup` calls; the first call's time is reported as compile."""
  first = warm_up(fn, warmup)
  times = [seconds(fn) for _ in range(repeats)]
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
  proc = subprocess.run(
      [sys.executable, '-m', module, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
  )
  if proc.returncode != 0:
    raise RuntimeError(f'{module} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}')
  return [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith('BENCH ')]


class _Server:
  """A `python -m module args --serve` subprocess: builds its step, prints `READY {json}`, then times one
  step per `step` line it reads (`TIME seconds`) until `quit`, when it prints its BENCH record."""

  def __init__(self, module: str, args: list, env: dict | None):
    full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3')
    full_env.update(env or {})
    self.name = f'{module} {" ".join(args)}'
    self.stderr = tempfile.TemporaryFile('w+')  # a file, not a pipe: a chatty child can't block on it
    self.proc = subprocess.Popen(
        [sys.executable, '-m', module, *args, '--serve'],
        cwd=REPO,
        env=full_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=self.stderr,
        text=True,
        bufsize=1,
    )
    self.ready = json.loads(self._expect('READY '))

  def _expect(self, prefix: str) -> str:
    for line in self.proc.stdout:
      if line.startswith(prefix):
        return line[len(prefix) :]
    self.proc.wait()
    self.stderr.seek(0)
    raise RuntimeError(f'{self.name} exited with {self.proc.returncode}:\n{self.stderr.read()[-3000:]}')

  def step(self) -> float | dict:
    self.proc.stdin.write('step\n')
    return json.loads(self._expect('TIME '))

  def finish(self) -> dict:
    self.proc.stdin.write('quit\n')
    record = json.loads(self._expect('BENCH '))
    self.proc.wait()
    return record

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


def serve(fn, warmup: int, record: dict) -> None:
  """The worker side of `interleaved`: first call (compile) and warm-up, then one timed `fn()` per
  `step` read from stdin; `record` (plus the first-call time and peak RSS) is the final BENCH line. `fn` may
  be a dict name -> fn: each step then times every one, in order, and reports a dict of seconds."""
  calls = fn if isinstance(fn, dict) else None
  first = warm_up((lambda: [f() for f in calls.values()]) if calls else fn, warmup)
  print('READY ' + json.dumps({'first_call_s': first}), flush=True)
  for line in sys.stdin:
    if line.strip() == 'quit':
      break
    took = {name: seconds(f) for name, f in calls.items()} if calls else seconds(fn)
    print(f'TIME {json.dumps(took)}', flush=True)
  emit({**record, 'first_call_s': first, 'peak_rss_mb': peak_rss_mb()})


def interleaved(module: str, contenders: dict, rounds: int, env: dict | None = None) -> dict:
  """Starts one `--serve` worker per contender (name -> args), one after another (compiles don't
  overlap), then runs `rounds` rounds in which each times one step, in an order rotated every round.
  Returns name -> record with per-round `times_s`, `median_s`, `min_s` and `first_call_s` (each a dict by
  name for a worker that times several calls per step: `serve` with a dict)."""
  servers, times = {}, {name: [] for name in contenders}
  try:
    for name, args in contenders.items():
      servers[name] = _Server(module, args, env)
    names = list(contenders)
    for r in range(rounds):
      for name in names[r % len(names) :] + names[: r % len(names)]:
        times[name].append(servers[name].step())
    records = {name: server.finish() for name, server in servers.items()}
  finally:
    for server in servers.values():
      server.kill()
  for name, record in records.items():
    steps = times[name]
    if steps and isinstance(steps[0], dict):
      series = {key: [step[key] for step in steps] for key in steps[0]}
      record.update(
          times_s=series,
          median_s={key: statistics.median(t) for key, t in series.items()},
          min_s={key: min(t) for key, t in series.items()},
          repeats=rounds,
      )
    else:
      record.update(times_s=steps, median_s=statistics.median(steps), min_s=min(steps), repeats=rounds)
  return records


def paired_ratio(times_a: list, times_b: list) -> float:
  """Median over rounds of b / a: how many times faster `a` is than `b`, each round's pair measured
  back to back, so drift between rounds cancels."""
  return statistics.median(b / a for a, b in zip(times_a, times_b))


def check_positive(p, args, names) -> None:
  """`p.error` (one line, exit 2) for the first of the integer options `names` of `args` that is not above 0: a
  size or round count of 0 was a traceback after minutes of compiling."""
  for name in names:
    if getattr(args, name) <= 0:
      p.error(f'--{name} must be a whole number above 0, got {getattr(args, name)}')
