"""The skip policy of `make test` (tests/skip_policy.py): a skip fails the run unless it needs an outside checkout."""

import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unexpected_skips_fail_and_outside_checkout_skips_pass(pytester):
  pytester.makeconftest(f'import sys\nsys.path.insert(0, {TESTS!r})\nfrom skip_policy import *  # noqa\n')
  pytester.makepyfile(
      test_skips="""
import pytest

def test_runtime_skip():
  pytest.skip('torch not installed')

@pytest.mark.skipif(True, reason='no C++ compiler')
def test_marked_skip():
  pass

@pytest.mark.skipif(True, reason='set ADPC_REPO to a checkout of liuzhuang13/anytime')
def test_outside_checkout():
  pass

def test_passes():
  pass
""",
      test_module_skip="""
import pytest
pytest.importorskip('a_module_that_is_not_installed')

def test_never_collected():
  pass
""",
  )
  result = pytester.runpytest_subprocess('-p', 'no:cacheprovider', '--continue-on-collection-errors')
  # a skip marker acts in setup, so it reports as an error; pytest.skip() in the body as a failure
  result.assert_outcomes(passed=1, failed=1, skipped=1, errors=2)
  text = result.stdout.str()
  for reason in ('torch not installed', 'no C++ compiler', "could not import 'a_module_that_is_not_installed'"):
    assert f'unexpected skip (Skipped: {reason}' in text
  assert 'ADPC_REPO' not in text.split('short test summary')[1]
