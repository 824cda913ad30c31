"""The engine benchmarks run end to end at small settings (synthetic data, no data dir).

Not a speed check: it proves train_bench, sweep_bench, sparse_bench, scaling_bench and
torch_reference_bench (when PyTorch is installed) still run on the engine's
API and print the JSON keys their notes and plots read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import script_env

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = ["--dataset=synthetic:ml-100k", "--split=random"]


def _run(tmp_path, script, *args):
  env = {k: v for k, v in script_env().items() if k != "RECAE_DATA_DIR"}
  env.update(JAX_PLATFORMS="cpu", RECAE_CACHE_DIR=str(tmp_path / "cache"),
             PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
  r = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout[r.stdout.index("{") if script != "scaling_bench.py"
                             else r.stdout.index("["):])


def test_train_bench(tmp_path):
  out = _run(tmp_path, "train_bench.py", "--preset=autorec", *DATA, "--layers=16",
             "--epochs=2", "--matmul_size=128")
  # Forward + backward GEMMs of cols x 16 (the first layer: no input gradient)
  # and 16 x cols, over every batch of the epoch, padding included.
  steps = -(-out["rows"] // out["batch_size"])
  assert out["gflop_per_epoch"] == pytest.approx(
      10 * out["cols"] * 16 * out["batch_size"] * steps / 1e9)
  for k in ("epoch_seconds_median", "matmul_peak_gflops", "fraction_of_peak",
            "bare_gemm_gflops", "bare_fraction_of_peak", "fraction_of_bare_gemms",
            "optimizer_seconds_per_epoch", "optimizer_fraction_of_epoch"):
    assert out[k] > 0, k
  assert out["fraction_of_bare_gemms"] == pytest.approx(
      out["achieved_gflops"] / out["bare_gemm_gflops"])


def test_sweep_bench(tmp_path):
  out = _run(tmp_path, "sweep_bench.py", "--preset=autorec", *DATA, "--layers=16",
             "--members=2", "--repeats=1")
  assert out["members"] == 2
  for k in ("sweep_epoch_seconds", "sequential_epoch_seconds", "speedup_vs_sequential",
            "naive_vmap_epoch_seconds", "sweep_compile_seconds", "lone_compile_seconds"):
    assert out[k] > 0, k


def test_sparse_bench(tmp_path):
  out = _run(tmp_path, "sparse_bench.py", *DATA, "--presets=autorec",
             "--batchings=stratified", "--repeats=1")
  (r,) = out["results"]
  assert r["dense_epoch_seconds"] > 0 and r["sparse_epoch_seconds"] > 0
  assert r["choice"] in ("dense", "sparse") and r["batching"] == "stratified"


def test_scaling_bench(tmp_path):
  out = _run(tmp_path, "scaling_bench.py", "--sizes=ml-100k", "--steps=1", "--hidden=16",
             "--repeats=3", f"--out={tmp_path / 'scaling'}")
  (r,) = out
  assert r["dense_epoch_seconds"] > 0 and r["sparse_epoch_seconds"] > 0
  assert len(r["sparse_all_seconds_per_step"]) == 3
  assert r["sparse_speedup_vs_dense"] == pytest.approx(
      np.median(r["dense_all_seconds_per_step"]) / np.median(r["sparse_all_seconds_per_step"]))
  assert (tmp_path / "scaling" / "scaling.json").exists()


def test_scaling_bench_times_kernel_layers_on_the_sparse_path(tmp_path):
  out = _run(tmp_path, "scaling_bench.py", "--sizes=ml-100k", "--steps=1", "--hidden=16",
             "--model=sparse_fc", "--paths=sparse", f"--out={tmp_path / 'scaling'}")
  (r,) = out
  assert r["model"] == "sparse_fc" and r["sparse_epoch_seconds"] > 0


def test_models_bench(tmp_path):
  out = _run(tmp_path, "models_bench.py", *DATA, "--presets=sparse_fc,cdae", "--repeats=1")
  res = out["results"]
  assert set(res) == {"autorec", "sparse_fc", "cdae"} and res["autorec"]["vs_autorec"] == 1.0
  assert res["sparse_fc"]["epoch_seconds"] > 0 and res["sparse_fc"]["steps_per_epoch"] == 1
  # A top-N preset is timed on its own protocol's training users.
  assert res["cdae"]["epoch_seconds"] > 0 and res["cdae"]["steps_per_epoch"] >= 1


def test_torch_reference_bench(tmp_path):
  # Both branches assert something: a run without torch must say how to get it
  # (CI counts a skipped test as a failure when real data is present).
  args = ("torch_reference_bench.py", "--preset=autorec", *DATA, "--layers=16",
          "--repeats=1")
  if importlib.util.find_spec("torch") is None:
    env = {k: v for k, v in script_env().items() if k != "RECAE_DATA_DIR"}
    env.update(JAX_PLATFORMS="cpu", RECAE_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "pip install torch" in r.stderr, r.stderr[-2000:]
    return
  out = _run(tmp_path, *args)
  assert out["jax_epoch_seconds"] > 0 and out["torch_epoch_seconds"] > 0
