"""benchmarks.run_all writes RESULTS.md whole: header (date, commit, machine), a section per benchmark, raw records."""

import datetime
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from benchmarks import run_all  # noqa: E402  pylint: disable=wrong-import-position


def _fake(name, value):
  return run_all.Bench(
      name,
      f'{name} title',
      lambda records: '| v |\n|---|\n' + ''.join(f'| {r["v"]} |\n' for r in records),
      lambda: [{'bench': name, 'v': value}],
      lambda: [{'bench': name, 'v': -value}],
  )


@pytest.fixture
def fake_benches(monkeypatch):
  monkeypatch.setattr(run_all, 'BENCHES', (_fake('alpha', 1), _fake('beta', 2)))
  monkeypatch.setattr(run_all.common, 'machine', lambda: {'cpus': 2, 'jax_backend': 'cpu'})


def test_writes_the_whole_file_and_replaces_what_was_there(fake_benches, tmp_path):
  out = tmp_path / 'RESULTS.md'
  out.write_text('# old\n\n## Design measurements (written by hand)\n\nhand-written row\n')
  run_all.main(['--out', str(out)])
  text = out.read_text()
  assert 'hand-written' not in text and '# old' not in text  # nothing survives a rerun
  assert text.startswith('# Benchmark results\n')
  assert f'on {datetime.date.today().isoformat()}, at commit ' in text
  assert f'at commit {run_all.commit()};' in text and run_all.commit() != 'unknown'
  assert 'Machine: cpus 2, jax_backend cpu' in text
  assert [line for line in text.splitlines() if line.startswith('## ')] == ['## alpha title', '## beta title']
  assert '| 1 |' in text and '| 2 |' in text
  records = text.split('```\n')[1].strip().splitlines()
  assert [json.loads(r) for r in records] == [{'bench': 'alpha', 'v': 1}, {'bench': 'beta', 'v': 2}]


def test_quick_and_only_select_settings_and_benchmarks(fake_benches, tmp_path):
  out = tmp_path / 'quick.md'
  run_all.main(['--quick', '--only', 'beta', '--out', str(out)])
  text = out.read_text()
  assert '## alpha title' not in text and '| -2 |' in text
  assert f'`python -m benchmarks.run_all --quick --only beta --out {out}`' in text
  with pytest.raises(SystemExit):
    run_all.main(['--only', 'gamma', '--out', str(out)])


def test_every_benchmark_has_full_and_quick_settings():
  names = [b.name for b in run_all.BENCHES]
  assert len(set(names)) == len(names) >= 6
  assert all(callable(b.run) and callable(b.quick) and b.title for b in run_all.BENCHES)
