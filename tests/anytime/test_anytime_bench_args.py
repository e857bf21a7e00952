"""`python -m benchmarks.anytime_cost` (and `benchmarks.anytime_crossover`, which shares its checks,
`benchmarks.sparse_patch_crossover` and `benchmarks.patch_max_ab`) with a bad argument stops before any work with one
line naming it and exit 2 (a zero size or a non-number batch was a traceback after the first contender's minutes; an
unknown variant was silently left out)."""

import os
import subprocess
import sys

import pytest

from benchmarks import anytime_cost, anytime_crossover, patch_max_ab, sparse_patch_crossover

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


COST_CASES = [
    (['--height', '0'], '--height must be a whole number above 0, got 0'),
    (['--width', '-5'], '--width must be a whole number above 0, got -5'),
    (['--height', 'x'], "argument --height: invalid int value: 'x'"),
    (['--rounds', '0'], '--rounds must be a whole number above 0'),
    (['--batches', 'x'], "--batches must be comma-separated whole numbers above 0, got 'x'"),
    (['--batches', '1,0'], "--batches must be comma-separated whole numbers above 0, got '1,0'"),
    (['--variants', 'bogus'], "--variants: unknown 'bogus'"),
    (['--variants', 'adpc,zzz'], "--variants: unknown 'zzz'"),
    (['--arch', 'bogus'], "--arch 'bogus' is not an HRNet arch"),
    (['--worker', 'exits', '--variant', 'adpc', '--height', '0'], '--height must be a whole number above 0'),
]
CROSSOVER_CASES = [
    (['--batches', 'x'], "--batches must be comma-separated whole numbers above 0, got 'x'"),
    (['--height', '0'], '--height must be a whole number above 0, got 0'),
    (['--arch', 'bogus'], "--arch 'bogus' is not an HRNet arch"),
    (['--fractions', 'x'], "--fractions: each must be a number in (0, 1), got 'x'"),  # was a ValueError
    (['--fractions', '0.5,1.5'], "--fractions: each must be a number in (0, 1), got '1.5'"),
    (['--segments', '2,5'], '--segments: each must be 2, 3 or 4'),
]
PATCH_CASES = [
    (['--archs', 'w48,bogus'], "--archs: unknown 'bogus'"),
    (['--height', '0'], '--height must be a whole number above 0, got 0'),
    (['--rounds', '0'], '--rounds must be a whole number above 0, got 0'),
    (['--fractions', 'x'], "--fractions must be comma-separated kept fractions in (0, 1), got 'x'"),
    (['--fractions', '0.5,1.0'], "--fractions must be comma-separated kept fractions in (0, 1), got '0.5,1.0'"),
]


AB_CASES = [
    (['--arch', 'w99'], "--arch: unknown 'w99'"),
    (['--rounds', '0'], '--rounds must be a whole number above 0, got 0'),
    (['--height', '-1'], '--height must be a whole number above 0, got -1'),
    (['--settings', 'fractions,tau=0.9'], "--settings: unknown 'tau=0.9'"),
]


@pytest.mark.parametrize(
    'bench, args, message',
    [(anytime_cost, *c) for c in COST_CASES]
    + [(anytime_crossover, *c) for c in CROSSOVER_CASES]
    + [(sparse_patch_crossover, *c) for c in PATCH_CASES]
    + [(patch_max_ab, *c) for c in AB_CASES],
)
def test_bad_argument_is_one_line(monkeypatch, capsys, bench, args, message):
  monkeypatch.setattr(sys, 'argv', [bench.__name__, *args])
  with pytest.raises(SystemExit) as e:
    bench.main()
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and message in err and '\n' not in err, err


def test_anytime_cost_bad_argument_exits_2_as_a_process():
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.anytime_cost', '--batches', 'x'],
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --batches must be comma-separated whole numbers above 0, got 'x' "
      '(python -m benchmarks.anytime_cost --help for usage)'
  ]
