"""benchmarks/device_check.py --smoke runs end to end on a CPU (no GPU, no data dir).

The device check is prepared here and run once on a lent accelerator, so
the smoke run must prove every section works: each present, "ok", with
finite numbers, and no deprecation warning raised from this project's code
(what jax 0.10 deprecates, the accelerator's jax 0.11 may have removed).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

from conftest import script_env

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("env", "peaks", "epochs_ml-100k", "dtype_rmse", "sweep_ml-100k",
            "epochs_ml-20m", "sweep_ml-20m", "epochs_netflix", "memory")
# Null where the backend has no memory statistics (the CPU).
NULLABLE = {"peak_bytes_in_use", "bytes_in_use", "bytes_limit"}


def _numbers(tree, path=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _numbers(v, f"{path}/{k}")
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _numbers(v, f"{path}[{i}]")
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield path, tree
  elif tree is None:
    yield path, None


def test_device_check_smoke(tmp_path):
  out = tmp_path / "x.json"
  env = {k: v for k, v in script_env(JAX_PLATFORMS="cpu").items()
         if k not in ("RECAE_DATA_DIR", "OUT")}
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"),
                      "--smoke", f"--out={out}"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(out.read_text())
  assert json.loads(r.stdout[r.stdout.index("{"):]) == report  # stdout too
  assert report["smoke"] is True and report["status"] == "ok", report.get("notes")
  for name in SECTIONS:
    sec = report["sections"][name]
    assert sec["status"] == "ok", (name, sec.get("error"), sec.get("traceback"))
    assert "error" not in json.dumps(sec["result"]), name
    assert math.isfinite(sec["wall_s"]) and sec["wall_s"] >= 0
  for path, x in _numbers(report):
    if x is None:
      assert path.rsplit("/", 1)[-1] in NULLABLE, path
    else:
      assert math.isfinite(x), path

  s = report["sections"]
  env_ = s["env"]["result"]
  for pkg in ("jax", "jaxlib", "flax", "optax"):
    assert env_["versions"][pkg], pkg
  assert env_["device_kind"]
  peaks = s["peaks"]["result"]
  for k in ("float32_tflops", "float32_highest_tflops", "bfloat16_tflops", "copy_gbps"):
    assert peaks[k] > 0, k
  for shape in ("ml-100k", "ml-20m", "netflix"):
    ep = s[f"epochs_{shape}"]["result"]
    for model in ("autorec", "deeprec"):
      for variant in ("dense_float32", "dense_bfloat16", "sparse_float32"):
        v = ep[model][variant]
        assert v["finite_loss"], (shape, model, variant)
        assert v["epoch_seconds"] > 0 and v["achieved_tflops"] > 0
        assert 0 < v["fraction_of_peak"]
        assert v["timed_steps"] <= v["steps_per_epoch"]
        assert v["extrapolated"] == (v["timed_steps"] < v["steps_per_epoch"])
      assert ep[model]["sparse_speedup_vs_dense"] > 0
      assert ep[model]["bfloat16_speedup_vs_float32"] > 0
  # the big smoke shapes are cut to one batch, so their epochs extrapolate
  assert s["epochs_ml-20m"]["result"]["autorec"]["dense_float32"]["extrapolated"]
  for model in ("autorec", "deeprec"):
    d = s["dtype_rmse"]["result"][model]
    assert 0 < d["float32"]["test_rmse"] < 5 and 0 < d["bfloat16"]["test_rmse"] < 5
    assert abs(d["rmse_bfloat16_minus_float32"]) < 0.5
  for shape in ("ml-100k", "ml-20m"):
    sw = s[f"sweep_{shape}"]["result"]
    assert sw["members"] == 8 and sw["sweep"]["members"] == 8
    assert sw["speedup_vs_sequential"] > 0
  assert "peak_bytes_in_use" in s["memory"]["result"]
  ours = [w for w in report["deprecations"]
          if str(REPO) in w["file"] and "site-packages" not in w["file"]]
  assert not ours, ours


def test_device_check_budget_skips_with_notes(tmp_path):
  """A spent budget skips every section, says so, and still writes the JSON."""
  env = {k: v for k, v in script_env().items() if k != "RECAE_DATA_DIR"}
  env.update(JAX_PLATFORMS="cpu", OUT=str(tmp_path),
             PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
  r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"),
                      "--smoke", "--budget_s=0"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads((tmp_path / "device_check.json").read_text())  # $OUT default
  assert report["status"] == "incomplete"
  assert set(report["sections"]) == set(SECTIONS)
  assert all(s["status"] == "skipped" for s in report["sections"].values())
  assert len(report["notes"]) == len(SECTIONS)
