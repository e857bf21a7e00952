"""core_jax.errors.check_fraction: the one (0, 1] check of keep ratios and confidence thresholds."""

import math

import numpy as np
import pytest

from core_jax.errors import UserError, check_fraction


@pytest.mark.parametrize('good', [1, 1.0, 0.5, 1e-9, np.float32(0.25), np.int64(1)])
def test_fractions_in_the_unit_interval_come_back_as_floats(good):
  got = check_fraction(good, 'keep ratio')
  assert isinstance(got, float) and got == float(good)


@pytest.mark.parametrize(
    'bad, message',
    [
        (0, 'keep ratio must be in (0, 1], got 0.0'),
        (-0.5, 'keep ratio must be in (0, 1], got -0.5'),
        (1.0001, 'keep ratio must be in (0, 1], got 1.0001'),
        (math.nan, 'keep ratio must be in (0, 1], got nan'),
        (True, 'keep ratio must be a number in (0, 1], got True'),
        ('0.5', "keep ratio must be a number in (0, 1], got '0.5'"),
        (None, 'keep ratio must be a number in (0, 1], got None'),
    ],
)
def test_anything_else_is_one_line_naming_the_value(bad, message):
  with pytest.raises(UserError) as e:
    check_fraction(bad, 'keep ratio')
  assert str(e.value) == message


def test_the_meaning_is_said_in_both_messages():
  with pytest.raises(UserError, match=r'^sfp.keep_rate must be in \(0, 1\] \(the fraction of filters kept\), got 2.0$'):
    check_fraction(2, 'sfp.keep_rate', 'the fraction of filters kept')
  with pytest.raises(UserError, match=r'must be a number in \(0, 1\] \(the fraction of filters kept\), got \[1\]$'):
    check_fraction([1], 'sfp.keep_rate', 'the fraction of filters kept')


def test_read_json_dict_is_one_line_for_a_missing_cut_or_non_object_file(tmp_path):
  from core_jax.errors import read_json_dict  # pylint: disable=import-outside-toplevel

  path = tmp_path / 'r.json'
  path.write_text('{"a": 1}')
  assert read_json_dict(str(path), 'the results', 'rerun') == {'a': 1}
  for text, message in [
      ('{"a": ', r'^cannot read the results .*r.json \(Expecting value: .*\): rerun$'),
      ('3', 'a JSON int'),
  ]:
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
      read_json_dict(str(path), 'the results', 'rerun')
    assert '\n' not in str(e.value)
  with pytest.raises(UserError, match=r'^cannot read the results .*nope.json \(\[Errno 2\] No such file'):
    read_json_dict(str(tmp_path / 'nope.json'), 'the results', 'rerun')
