"""The one error type that means "the user gave us bad input"."""


class UserError(Exception):
  """Bad input from the user: config, data, checkpoint. main prints it as one line."""
