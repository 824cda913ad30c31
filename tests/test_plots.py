"""Every figure is written as a non-empty PNG."""


import numpy as np

from recae_jax import plots, recommend

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
  data = path.read_bytes()
  return len(data) > 1000 and data[:8] == PNG


def test_figures_are_pngs(tmp_path):
  rng = np.random.default_rng(0)
  runs = {"a": [{"epoch": e, "train_loss": 1 / e, "valid_rmse": 1 + 1 / e} for e in (1, 2, 3)],
          "b": [{"epoch": e, "train_loss": 2 / e} for e in (1, 2)]}
  actual = rng.integers(1, 6, 300).astype(float)
  xy = rng.normal(size=(50, 2))
  genres = np.array(["Drama", "Comedy", "Action"], dtype=object)[rng.integers(0, 3, 50)]
  paths = [
      plots.plot_training_curves(runs, tmp_path / "curves.png"),
      plots.plot_metric_curves({"vae": [{"epoch": 5, "train_loss": 3.0, "valid_ndcg@100": 0.3},
                                        {"epoch": 6, "train_loss": 2.0}]},
                               ("train_loss", "valid_ndcg@100"), tmp_path / "topn.png"),
      plots.plot_pred_vs_actual(actual + rng.normal(0, 0.5, 300), actual,
                                tmp_path / "hist.png"),
      plots.plot_reconstruction(actual[:30], actual[:30] + 0.3, tmp_path / "user.png",
                                "user 1"),
      plots.plot_embedding_2d(xy, genres, tmp_path / "sub" / "emb.png", "items",
                              annotate={0: "Liar Liar (1997)"}),
      plots.plot_embedding_2d(recommend.pca_2d(rng.normal(size=(50, 8))), genres,
                              tmp_path / "pca.png", "pca"),
  ]
  for p in paths:
    assert _is_png(p), p


def test_pca_2d_recovers_the_main_axis():
  rng = np.random.default_rng(1)
  x = np.outer(rng.normal(size=200), [3.0, 0, 0, 0]) + rng.normal(0, 0.01, (200, 4))
  xy = recommend.pca_2d(x)
  assert xy.shape == (200, 2)
  assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.999


def test_histories_of_a_lone_run_and_of_a_sweep(tmp_path):
  """A lone run's curve comes from its metrics.jsonl; a sweep (or an
  ensemble) keeps one per member, and each is plotted."""
  import json
  lone, sweep = tmp_path / "lone", tmp_path / "sweep"
  rows = [{"epoch": 1, "train_loss": 2.0, "valid_rmse": 1.1},
          {"epoch": 2, "train_loss": 1.0, "valid_rmse": 1.0}]
  for d in (lone, sweep / "members" / "k00", sweep / "members" / "k01"):
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (sweep / "members" / "k02").mkdir()  # a member that has not started: no curve
  assert plots.histories(lone, "a") == {"a": rows}
  assert plots.histories(sweep, "s") == {"s/k00": rows, "s/k01": rows}
  assert plots.histories(tmp_path / "none", "n") == {"n": []}
