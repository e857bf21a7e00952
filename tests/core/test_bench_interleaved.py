"""benchmarks.common: the interleaved runner behind the throughput benchmark (processes taking turns)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position

_WORKER = """
import sys, time
from benchmarks import common
delay = float(sys.argv[1])
common.serve(lambda: time.sleep(delay), warmup=1, record={'bench': 'fake', 'delay': delay})
"""


def test_interleaved_times_each_worker_in_turns_and_pairs_ratios(tmp_path):
  (tmp_path / 'fake_worker.py').write_text(_WORKER)
  env = {'PYTHONPATH': os.pathsep.join([common.REPO, str(tmp_path)])}
  by = common.interleaved('fake_worker', {'fast': ['0.01'], 'slow': ['0.05']}, rounds=3, env=env)
  assert set(by) == {'fast', 'slow'}
  for name, delay in (('fast', 0.01), ('slow', 0.05)):
    r = by[name]
    assert r['bench'] == 'fake' and r['delay'] == delay and r['repeats'] == 3 and len(r['times_s']) == 3
    assert all(delay <= t < delay + 0.5 for t in r['times_s'])
    assert r['median_s'] >= r['min_s'] > 0 and r['first_call_s'] >= delay and r['peak_rss_mb'] > 0
  assert common.paired_ratio(by['fast']['times_s'], by['slow']['times_s']) > 2
  assert common.paired_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0  # median of 2, 1, 0.5


def test_interleaved_reports_a_crashed_worker(tmp_path):
  (tmp_path / 'crashing_worker.py').write_text('raise SystemExit("no model here")\n')
  env = {'PYTHONPATH': os.pathsep.join([common.REPO, str(tmp_path)])}
  with pytest.raises(RuntimeError, match='no model here'):
    common.interleaved('crashing_worker', {'only': []}, rounds=1, env=env)


_MANY_WORKER = """
import time
from benchmarks import common
common.serve({'short': lambda: time.sleep(0.01), 'long': lambda: time.sleep(0.04)}, warmup=1, record={'bench': 'many'})
"""


def test_interleaved_times_every_call_of_a_worker_that_serves_several(tmp_path):
  (tmp_path / 'many_worker.py').write_text(_MANY_WORKER)
  env = {'PYTHONPATH': os.pathsep.join([common.REPO, str(tmp_path)])}
  r = common.interleaved('many_worker', {'w': []}, rounds=2, env=env)['w']
  assert r['bench'] == 'many' and r['repeats'] == 2 and set(r['times_s']) == {'short', 'long'}
  for name, delay in (('short', 0.01), ('long', 0.04)):
    assert len(r['times_s'][name]) == 2 and all(delay <= t < delay + 0.5 for t in r['times_s'][name])
    assert r['median_s'][name] >= r['min_s'][name] >= delay
