"""Reliability: bit-for-bit reproducibility, SIGKILL + --resume, corrupted
checkpoints, and an unwritable workdir.

The fault tests run experiments/train.py as a real process on a small
generic CSV (about 6,000 ratings) so a run takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import low_rank_ratings
from recae_jax.problem import build_problem, load_split
from recae_jax import train
from recae_jax.config import make_config

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 5


def _quiet(_):
  pass


# ------------------------------------------------------------ reproducibility

def test_same_config_and_seed_give_identical_metrics(tiny, tmp_path):
  ds, split = tiny
  # Dropout and shuffling both draw from the seed, so the RNG path is covered.
  cfg = make_config("autorec", layers=(16,), batch_size=16, epochs=6,
                    learning_rate=1e-2, input_dropout=0.1, dropout=0.1)
  runs = []
  for name in ("a", "b"):
    problem = build_problem(cfg, ds, split)
    runs.append(train.train_and_evaluate(cfg, tmp_path / name, progress=_quiet,
                                         problem=problem))
  # Exact: same process, same compiled programs, same inputs; XLA on CPU is
  # deterministic for a fixed program, so no tolerance is needed.
  for key in ("test_rmse", "test_mae", "best_epoch", "best_valid_rmse"):
    assert runs[0][key] == runs[1][key], key
  hist = [[json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
          for n in ("a", "b")]
  assert [r["valid_rmse"] for r in hist[0]] == [r["valid_rmse"] for r in hist[1]]
  assert [r["train_loss"] for r in hist[0]] == [r["train_loss"] for r in hist[1]]
  np.testing.assert_array_equal(np.load(tmp_path / "a" / "test_pred.npy"),
                                np.load(tmp_path / "b" / "test_pred.npy"))


# ------------------------------------------------------ the training process

@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> pathlib.Path:
  ds, _ = low_rank_ratings(n_users=300, n_items=100, density=0.2)
  r = ds.ratings
  path = tmp_path_factory.mktemp("data") / "ratings.csv"
  lines = ["user,item,rating,timestamp"] + [
      f"{u + 1},{i + 1},{int(x)},{t}" for u, i, x, t in
      zip(r.users, r.items, r.ratings, r.timestamps)]
  path.write_text("\n".join(lines) + "\n")
  return path


def _args(csv: pathlib.Path, workdir: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, str(REPO / "experiments" / "train.py"), f"--dataset={csv}",
          "--split=random", "--valid_fraction=0.1", "--layers=16", "--batch_size=16",
          "--learning_rate=0.01", "--input_dropout=0.1", f"--epochs={EPOCHS}",
          "--checkpoint_every=1", f"--workdir={workdir}", *extra]


def _env() -> dict:
  return dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")


def _train(csv, workdir, *extra) -> subprocess.CompletedProcess:
  return subprocess.run(_args(csv, workdir, *extra), capture_output=True, text=True,
                        cwd=REPO, env=_env(), timeout=240)


def _metrics(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / "metrics.json").read_text())


def _steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(csv_path, tmp_path_factory) -> pathlib.Path:
  """One uninterrupted run; tests copy it rather than retrain."""
  workdir = tmp_path_factory.mktemp("ref") / "run"
  proc = _train(csv_path, workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def test_sigkill_then_resume_matches_uninterrupted_run(csv_path, reference, tmp_path):
  workdir = tmp_path / "killed"
  kill_after = random.Random(1234).randint(2, EPOCHS - 2)
  proc = subprocess.Popen(_args(csv_path, workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=_env())
  seen = []
  try:
    for line in proc.stdout:
      seen.append(line)
      if line.startswith(f"epoch {kill_after:4d}/"):
        # Right after the epoch line the process is saving that epoch's
        # checkpoint (or starting the next epoch): a kill mid-write is likely.
        os.kill(proc.pid, signal.SIGKILL)
        break
  finally:
    proc.stdout.close()
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, ("run ended before the kill", seen)
  assert not (workdir / "metrics.json").exists()
  # Finished steps only: orbax writes into a temporary name and renames it.
  steps = _steps(workdir)
  assert steps, "no checkpoint before the kill"

  resumed = _train(csv_path, workdir, "--resume")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  first = resumed.stdout.splitlines()[0]
  # It continued from the newest finished checkpoint, and none it saw was
  # half-written (a damaged one would be skipped with an "unreadable" warning).
  assert first.startswith("resumed from epoch "), resumed.stdout
  assert int(first.split()[3]) == steps[-1], (steps, first)
  assert "unreadable" not in resumed.stderr
  got, want = _metrics(workdir), _metrics(reference)
  for key in ("test_rmse", "test_mae", "best_epoch", "best_valid_rmse"):
    assert got[key] == want[key], key
  hist = [json.loads(x)["epoch"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert hist == list(range(1, EPOCHS + 1))


def _corrupt(step_dir: pathlib.Path) -> int:
  """Overwrites every array data file of a checkpoint step with garbage."""
  n = 0
  for p in step_dir.rglob("*"):
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(b"\x00not an array\xff" * 3)
      n += 1
  assert n, f"no array files under {step_dir}"
  return n


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(reference, csv_path,
                                                                tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  (workdir / "metrics.json").unlink()
  steps = _steps(workdir)
  assert steps[-1] == EPOCHS and len(steps) >= 2, steps
  _corrupt(workdir / "checkpoints" / str(steps[-1]))
  proc = _train(csv_path, workdir, "--resume")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[0].startswith(f"resumed from epoch {steps[-2]} "), proc.stdout
  assert f"checkpoint {steps[-1]} in" in proc.stderr and "unreadable" in proc.stderr
  assert "Traceback" not in proc.stderr
  # The damaged step was moved aside and the finished run saved a fresh one,
  # so resuming again finds nothing unreadable.
  assert len(list((workdir / "checkpoints_corrupt").glob(f"{steps[-1]}-*"))) == 1
  assert _steps(workdir)[-1] == steps[-1]
  again = _train(csv_path, workdir, "--resume")
  assert again.returncode == 0 and "unreadable" not in again.stderr, again.stderr[-2000:]
  got, want = _metrics(workdir), _metrics(reference)
  for key in ("test_rmse", "best_epoch", "best_valid_rmse"):
    assert got[key] == want[key], key


def test_all_checkpoints_corrupted_is_a_clean_error(reference, csv_path, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  for step in _steps(workdir):
    _corrupt(workdir / "checkpoints" / str(step))
  proc = _train(csv_path, workdir, "--resume")
  assert proc.returncode == 2, proc.stderr[-2000:]
  # One error line after one warning per damaged step; the sha256 manifests
  # catch the damage before orbax would fail noisily, so no traceback.
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.count("error: ") == 1, proc.stderr[-3000:]
  line = proc.stderr[proc.stderr.index("error: "):].split("\n")[0]
  assert "no readable checkpoint" in line and "new workdir" in line, line
  assert "test RMSE" not in proc.stdout


def test_intact_checkpoint_of_another_state_is_an_error_not_damage(tmp_path):
  # e.g. a run with --lbfgs_restart resumed without it: the optimizer state's
  # structure differs. The files are fine, so they must not be set aside.
  import jax.numpy as jnp
  from recae_jax.checkpoint import Checkpoints, abstract_like
  from recae_jax.errors import UserError
  saved = {"w": jnp.arange(3.0), "opt": {"count": jnp.zeros((), jnp.int32)}}
  ckpt = Checkpoints(tmp_path / "checkpoints")
  ckpt.save(1, saved, {"epoch": 1})
  other = {"w": jnp.zeros(3), "opt": {"count": jnp.zeros((), jnp.int32),
                                      "memory": jnp.zeros(2)}}
  with pytest.raises(UserError, match="checkpoint 1 .* is intact but does not fit .*new --workdir"):
    ckpt.restore_latest(abstract_like(other))
  assert ckpt.steps() == [1] and not (tmp_path / "checkpoints_corrupt").exists()
  state, meta = ckpt.restore_latest(abstract_like(saved))
  np.testing.assert_array_equal(np.asarray(state["w"]), [0.0, 1.0, 2.0])
  assert meta["epoch"] == 1
  ckpt.close()


def test_workdir_under_a_file_is_a_clean_error(csv_path, tmp_path):
  # chmod cannot stop root (the tests run as root here); a path below a
  # regular file fails for everyone.
  blocker = tmp_path / "file.txt"
  blocker.write_text("not a directory\n")
  before = sorted(p.name for p in tmp_path.iterdir())
  proc = _train(csv_path, blocker / "run")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: workdir "), proc.stderr
  assert "not writable" in lines[0]
  assert proc.stdout == ""
  assert sorted(p.name for p in tmp_path.iterdir()) == before
  assert blocker.read_text() == "not a directory\n"


def test_checkpoint_from_before_the_engine_rework_is_a_one_line_error(tiny, tmp_path):
  # The old layout (one model per state, meta without "format") is neither
  # restored into the wrong shapes nor moved aside: the user is told to retrain.
  from recae_jax import checkpoint as ckpt_lib
  from recae_jax.errors import UserError
  ds, split = tiny
  cfg = make_config("autorec", layers=(8,), batch_size=16, epochs=2)
  problem = build_problem(cfg, ds, split)
  train.train_and_evaluate(cfg, tmp_path, progress=_quiet, problem=problem)
  old = ckpt_lib.Checkpoints(tmp_path / "checkpoints")
  params = {"enc_0_kernel": np.zeros((3, 8), np.float32)}
  old.save(7, {"state": {"params": params}, "best_params": params},
           {"epoch": 7, "best_epoch": 7, "best_valid_rmse": 1.0, "bad_epochs": 0})
  old.close()
  with pytest.raises(UserError, match="checkpoint 7 .* older recae_jax .* retrain"):
    train.train_and_evaluate(dataclasses.replace(cfg, epochs=9), tmp_path, resume=True,
                             progress=_quiet, problem=problem)
  assert (tmp_path / "checkpoints" / "7").is_dir()  # left untouched


# ------------------------------------------------- interrupts and the lock

def _start(csv_path, workdir, *extra):
  return subprocess.Popen(_args(csv_path, workdir, *extra), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())


def _wait_for_epoch(proc, n: int) -> list[str]:
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith(f"epoch {n:4d}/"):
      return seen
  raise AssertionError(f"run ended before epoch {n}: {seen}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_at_an_epoch_then_resume_bit_for_bit(
    csv_path, reference, tmp_path, sig, code):
  workdir = tmp_path / "stopped"
  proc = _start(csv_path, workdir)
  try:
    _wait_for_epoch(proc, 2)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == code, err[-2000:]
  lines = [x for x in err.splitlines() if x.strip()]
  assert "Traceback" not in err
  assert lines[-1].startswith("interrupted at epoch ") and lines[-1].endswith(
      "; continue with --resume"), lines[-3:]
  stopped_at = int(lines[-1].split()[3].rstrip(";"))
  assert 2 <= stopped_at < EPOCHS and _steps(workdir)[-1] == stopped_at
  resumed = _train(csv_path, workdir, "--resume")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  got, want = _metrics(workdir), _metrics(reference)
  for key in ("test_rmse", "test_mae", "best_epoch", "best_valid_rmse"):
    assert got[key] == want[key], key  # bit for bit
  np.testing.assert_array_equal(np.load(workdir / "test_pred.npy"),
                                np.load(reference / "test_pred.npy"))


def test_second_run_on_a_workdir_in_use_is_refused(csv_path, tmp_path):
  workdir = tmp_path / "busy"
  # Far more epochs than the test lasts: the first run is still training when
  # it is terminated (40 epochs finished before the second run started on an
  # idle machine, so SIGTERM came after the training loop).
  first = _start(csv_path, workdir, "--epochs=100000", "--checkpoint_every=100000")
  try:
    _wait_for_epoch(first, 1)
    second = _train(csv_path, workdir)
    assert second.returncode == 2
    err = [x for x in second.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and f"workdir {workdir} is in use by another run (pid {first.pid})" \
        in err[0], second.stderr
    assert first.poll() is None  # the first run is unaffected
  finally:
    first.terminate()
    first.communicate(timeout=120)
  assert first.returncode == 143
  # The lock went with the process: the workdir can be resumed now.
  again = _train(csv_path, workdir, "--resume", "--epochs=2")
  assert again.returncode == 0, again.stderr[-2000:]
