"""The one error type that means "the user gave us bad input", and the checks several lines share."""

import json
import numbers


class UserError(Exception):
  """Bad input from the user: config, data, checkpoint. main prints it as one line."""


def check_fraction(value, what: str, meaning: str = '') -> float:
  """``value`` as a float in (0, 1] (a keep ratio, a confidence threshold), else a one-line UserError naming
  ``what`` (and ``meaning``, a few words on what the number is). Bools and strings are not numbers here."""
  note = f' ({meaning})' if meaning else ''
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise UserError(f'{what} must be a number in (0, 1]{note}, got {value!r}')
  fraction = float(value)
  if not 0.0 < fraction <= 1.0:  # NaN fails too
    raise UserError(f'{what} must be in (0, 1]{note}, got {fraction}')
  return fraction


def read_json_dict(path: str, what: str, then: str) -> dict:
  """The JSON object in the file at `path`, else a one-line UserError naming it as `what` (e.g. "the run's
  results") and what to do (`then`): a file cut short, not JSON or not an object was a traceback."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {what} {path} ({" ".join(str(e).split())}): {then}') from None
  if not isinstance(value, dict):
    raise UserError(f'{path} is not {what} (a JSON {type(value).__name__}, not an object): {then}')
  return value
