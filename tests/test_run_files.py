"""The full-scale study configs parse into the published models; the sweep launches every run."""
import glob
import os
import subprocess

import gin
import pytest

from hybridir import gin_utils
from hybridir import text
from tests.conftest import REPO_ROOT

STUDY_FILES = sorted(p for p in glob.glob(str(REPO_ROOT / "gin_configs/runs/study/*.gin"))
                     if not os.path.basename(p).startswith("demo_"))
EMB_DIMS = {"mt5_base": 768, "mt5_large": 1024, "mt5_xl": 2048, "xlmr_base": 768,
            "xlmr_large": 1024, "labse": 768}


@pytest.mark.parametrize("path", [p for p in STUDY_FILES if not p.endswith("base.gin")
                                  or "_base" in os.path.basename(p)], ids=os.path.basename)
def test_study_config_builds_its_published_model_from_a_checkpoint(path):
  name = os.path.basename(path)[:-len(".gin")]
  gin.clear_config()
  gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'", "CORPUS_DIR = '/tmp/corpus'"], finalize=False)
  model = gin_utils.evaluate("MODEL")
  assert model.encoder_config.emb_dim == EMB_DIMS[name]
  assert model.encoder_config.family == gin_utils.evaluate("FAMILY")
  assert gin_utils.file_macro(path, "FAMILY") == gin_utils.evaluate("FAMILY")  # study.family
  assert gin_utils.evaluate("INIT_CHECKPOINT")
  assert gin.query_parameter("%RUN").configurable.name == "train_and_evaluate"
  # The paper's settings: AdamW 3e-5, weight decay 0.01, batch 100, alpha 0.5.
  assert (gin_utils.evaluate("LEARNING_RATE"), gin_utils.evaluate("WEIGHT_DECAY"),
          gin_utils.evaluate("BATCH_SIZE"), gin_utils.evaluate("ALPHA")) == (3e-5, 0.01, 100, 0.5)
  assert gin.query_parameter("optim.create_optimizer.name") == "adamw"
  # Early stopping: the checkpoint with the lowest validation loss; the prefixes (after E5).
  assert gin.query_parameter("trainer.train.best_metric") == "eval/loss"
  assert gin.query_parameter("checkpoints.Checkpointer.best_mode") == "min"
  text_format = text.TextFormat()
  assert (text_format.query_prefix, text_format.passage_prefix) == ("Query: ", "Passage: ")
  gin.clear_config()


@pytest.mark.parametrize("path", ["runs/smoke.gin", "runs/eval.gin", "runs/study/demo_mt5.gin",
                                  "runs/study/demo_xlmr.gin", "runs/study/demo_labse.gin"])
def test_data_paths_follow_hybridir_data_dir_else_shared_data(path, monkeypatch):
  path = f"gin_configs/{path}"
  for variable, root in (("/elsewhere/data", "/elsewhere/data"), (None, "../shared/data")):
    if variable:
      monkeypatch.setenv("HYBRIDIR_DATA_DIR", variable)
    else:
      monkeypatch.delenv("HYBRIDIR_DATA_DIR")
    gin.clear_config()
    gin_utils.parse([path], finalize=False)
    paths = {name: gin_utils.evaluate(name) for name in ("DATA_DIR", "CORPUS_DIR")
             if name in gin_utils.declared_macros()}
    assert paths and set(paths.values()) <= {root, f"{root}/xquad-r"}, paths
    assert {name: gin_utils.file_macro(path, name) for name in paths} == paths
  gin.clear_config()


def sweep_dry_run(tmp_path, *options) -> list[str]:
  """The hybridir.main jobs launch/study_sweep.sh --dry-run prints (gcloud faked)."""
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\nif [ \"$1 $2\" = 'config get-value' ]; then echo my-project; fi\n")
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
  result = subprocess.run(
      ["launch/study_sweep.sh", "--bucket", "gs://b/study", "--corpus_dir", "gs://b/corpus",
       "--zone", "us-central2-b", "--accelerator_type", "v4-32", *options, "--dry-run"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  return [line for line in result.stdout.splitlines() if "hybridir.main" in line]


def test_sweep_dry_run_trains_exports_and_evaluates_every_run(tmp_path):
  jobs = sweep_dry_run(tmp_path, "--models", "mt5_base xlmr_base labse", "--strategies",
                       "hybrid cross", "--seeds", "0")
  assert len(jobs) == 3 * 2  # models x strategies: one job trains, exports and evaluates.
  assert sum("runs/study/labse.gin" in j and "gs://b/study/labse_hybrid_seed0" in j
             for j in jobs) == 1
  assert sum("runs/study/mt5_base.gin" in j and "ALPHA=0.5" in j for j in jobs) == 1
  assert sum("gs://b/study/xlmr_base_cross_seed0" in j and "ALPHA=0.0" in j for j in jobs) == 1


def test_sweep_runs_the_three_arms_of_every_model_with_the_papers_alphas(tmp_path):
  jobs = sweep_dry_run(tmp_path, "--models", "labse xlmr_base", "--seeds", "0")
  assert len(jobs) == 2 * 3  # The default strategies: X-X-mono, X-Y and hybrid.
  for model in ("labse", "xlmr_base"):
    for strategy, alpha in (("mono", "1.0"), ("cross", "0.0"), ("hybrid", "0.5")):
      assert sum(f"runs/study/{model}.gin" in j and f"gs://b/study/{model}_{strategy}_seed0" in j
                 and f"ALPHA={alpha}" in j for j in jobs) == 1, (model, strategy)
