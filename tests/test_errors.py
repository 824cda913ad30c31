"""How every script ends on a user's mistake or a closed pipe (errors.run_main)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    from absl import app
    from recae_jax.errors import UserError, run_main

    @run_main
    def main(argv):
      if sys.argv[-1] == "bad":
        raise UserError("--x=3 is not allowed; use --x=1")
      print("line\\n" * int(sys.argv[-1]), end="")

    app.run(main, argv=sys.argv[:1])
""")


def _run(arg: str, close_stdout: bool):
  p = subprocess.Popen([sys.executable, "-c", SCRIPT, arg], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  if close_stdout:  # a reader that stops at once, as `| head -0` does
    p.stdout.close()
    err = p.stderr.read()
  else:
    _, err = p.communicate()
  return p.wait(timeout=120), err


@pytest.mark.parametrize("lines", ["1", "200000"])  # fails at exit / while printing
def test_output_into_a_closed_pipe_ends_quietly(lines):
  rc, err = _run(lines, close_stdout=True)
  assert rc == 141 and err == "", err


def test_user_error_is_one_line_and_status_2():
  rc, err = _run("bad", close_stdout=False)
  assert rc == 2 and err == "error: --x=3 is not allowed; use --x=1\n", err
