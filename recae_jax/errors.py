"""User-facing errors.

Anything a user can cause (a bad file, flag, id or config) raises `UserError`
with a one-line message naming the culprit and the fix. Scripts catch it via
`run_main` and exit with status 2 and no traceback; library callers can catch
it like any ValueError.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(ValueError):
  """A problem with the user's input: message is one line, shown verbatim."""


def run_main(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """Wraps an absl `main` so a UserError prints one line and exits 2."""

  def wrapped(argv):
    from absl import flags, logging
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped
