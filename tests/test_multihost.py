"""The multi-host path, run for real: two local processes joined by
`jax.distributed.initialize` (CPU collectives over gloo), one device each,
train exactly like one process holding two devices."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys

from conftest import script_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--preset=autorec", "--dataset=synthetic:300x200x6000", "--split=random",
        "--layers=32", "--epochs=3", "--batch_size=32", "--eval_batch_size=64"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(xla_flags: str = "") -> dict:
  return script_env(xla_flags, JAX_PLATFORMS="cpu")


def _history(workdir: pathlib.Path) -> list[tuple]:
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["epoch"], r["train_loss"], r["valid_rmse"]) for r in rows]


def _run_both(tmp_path, args) -> tuple[pathlib.Path, pathlib.Path]:
  """Workdirs of the same run as 2 processes x 1 device and 1 process x 2."""
  port = _free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      [sys.executable, "experiments/train.py", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}", *args, f"--workdir={multi}"],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  for out, _ in outs:
    assert "mesh: {'data': 2, 'model': 1} over 2 devices" in out

  single = tmp_path / "single"
  res = subprocess.run(
      [sys.executable, "experiments/train.py", *args, f"--workdir={single}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=_env("--xla_force_host_platform_device_count=2"))
  assert res.returncode == 0, res.stderr[-3000:]
  return multi, single


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
  # A 2-member ensemble: each member is an ordinary sharded run, and the
  # ensemble reads the members' predictions back, which process 0 writes
  # (behind a barrier) -- the multi-process file handling end to end.
  multi, single = _run_both(tmp_path, [*ARGS, "--ensemble=2"])
  a = json.loads((multi / "metrics.json").read_text())
  b = json.loads((single / "metrics.json").read_text())
  assert a["member_test_rmse"] == b["member_test_rmse"]
  assert a["test_rmse"] == b["test_rmse"] and a["best_epoch"] == b["best_epoch"]
  for m in ("m0", "m1"):
    assert _history(multi / "members" / m) == _history(single / "members" / m)
    # Process 0 alone wrote the workdir; both wrote the checkpoint collectively.
    assert (multi / "members" / m / "valid_pred.npy").exists()
  assert (multi / "members" / "checkpoints" / "3").exists()  # the members' one engine
  assert (multi / "test_pred.npy").exists()
  assert not list(multi.rglob(".*.npy"))  # no temp file left behind
