"""User-facing errors.

Anything a user can cause (a bad file, flag, id or config) raises `UserError`
with a one-line message naming the culprit and the fix. Scripts catch it via
`run_main` and exit with status 2 and no traceback; library callers can catch
it like any ValueError. Ctrl-C / SIGTERM during training end as `Interrupted`
(exit 130 / 143, one line, no traceback).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

from absl import flags, logging


class UserError(ValueError):
  """A problem with the user's input: message is one line, shown verbatim."""


class Interrupted(Exception):
  """SIGINT / SIGTERM stopped training at an epoch boundary, after its
  checkpoint was written. `exit_code` is 130 (SIGINT) or 143 (SIGTERM)."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
  """UserWarnings (dropped duplicates, ...) as one `warning:` line, without
  the source line Python would print after them."""
  if issubclass(category, UserWarning):
    print(f"warning: {message}", file=file or sys.stderr)
  else:
    _default_showwarning(message, category, filename, lineno, file, line)


def run_main(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """Wraps an absl `main` so a UserError prints one line and exits 2, a
  UserWarning prints one `warning:` line, and output into a closed pipe
  (`| head`) ends the script without a traceback.

  Positional arguments are refused here, once for every script (they all take
  flags only): a stray word would otherwise be ignored silently.
  """

  def wrapped(argv):
    warnings.showwarning = _show_warning
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
      if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])} "
                        "(every option is a --flag; see --help)")
      out = main(argv)
      sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
      return out
    except BrokenPipeError:  # `script | head`: stop quietly, as other tools do
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      sys.exit(141)  # 128 + SIGPIPE, what a shell reports for such a pipe
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except Interrupted as e:
      print(str(e), file=sys.stderr)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading, compiling)
      print("interrupted (before any epoch finished; nothing to resume)", file=sys.stderr)
      sys.exit(130)

  return wrapped
