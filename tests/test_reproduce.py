"""experiments/reproduce.py: a quick two-row report on real data, row reuse,
and a clean error for an unknown row."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "experiments" / "reproduce.py")


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=600)


@pytest.mark.realdata
def test_quick_report_on_two_rows(data_dir, tmp_path):
  out = tmp_path / "report"
  args = ("--quick", "--only=knn_u1,autorec_u1", f"--out={out}", f"--data_dir={data_dir}")
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = (out / "REPORT.md").read_text()
  assert "--quick" in report
  table = [x for x in report.splitlines() if x.startswith("| ml-100k")]
  assert len(table) == 2 and "`knn_u1`" in table[0] and "`autorec_u1`" in table[1]
  assert "0.951" in table[0] and "GLocal-K 0.8889" in table[1]  # published anchors
  rows = json.loads((out / "REPORT.json").read_text())["rows"]
  assert [r["row"] for r in rows] == ["knn_u1", "autorec_u1"]
  for r in rows:
    for key in ("rmse", "mae", "seconds"):
      assert math.isfinite(r[key]) and r[key] > 0, (r["row"], key, r[key])
    assert r["rmse"] < 2.0
  assert rows[1]["epochs"] in (1, 2)
  for name in ("rmse.png", "training_curves.png"):
    assert (out / "plots" / name).stat().st_size > 0, name
  assert (out / "runs" / "autorec_u1" / "checkpoints").is_dir()

  # Rows whose metrics.json exists are reused, not retrained.
  again = _run(*args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stdout.count("reusing") == 2 and "epoch " not in again.stdout
  assert json.loads((out / "REPORT.json").read_text())["rows"] == rows


def test_unknown_row_is_a_clean_error(tmp_path):
  proc = _run("--only=knn_u1,nope", f"--out={tmp_path / 'r'}")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--only" in lines[0] and "nope" in lines[0], proc.stderr
  assert not (tmp_path / "r").exists()
