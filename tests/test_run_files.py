"""The full-scale study configs parse into the published models; the sweep launches every run."""
import glob
import os
import subprocess

import gin
import pytest

from hybridir import gin_utils
from hybridir.study import study_run
from tests.conftest import REPO_ROOT

# The full-scale files: not the CPU ones (demo_*, pretrained_*), nor the MIRACL stage (no training).
STUDY_FILES = sorted(p for p in glob.glob(str(REPO_ROOT / "gin_configs/runs/study/*.gin"))
                     if not os.path.basename(p).startswith(("demo_", "pretrained_"))
                     and os.path.basename(p) != "miracl.gin")
CPU_STUDY_FILES = ["demo_mt5", "demo_xlmr", "demo_labse", "pretrained_minilm"]
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
  # Early stopping: the checkpoint with the lowest validation loss, validated at each checkpoint;
  # the prefixes (after E5).
  configs = gin_utils.bound_arguments("hybridir.training.trainer.train",
                                      ["checkpoint_cfg", "eval_cfg"])
  checkpoint_cfg, eval_cfg = configs["checkpoint_cfg"], configs["eval_cfg"]
  assert (checkpoint_cfg.best_metric, checkpoint_cfg.best_mode) == ("eval/loss", "min")
  assert checkpoint_cfg.period == eval_cfg.period == gin_utils.evaluate("EVAL_PERIOD")
  assert eval_cfg.input is not None
  assert checkpoint_cfg.init_params.path == gin_utils.evaluate("INIT_CHECKPOINT")
  text_format = gin_utils.evaluate("TEXT_FORMAT")
  assert (text_format.query_prefix, text_format.passage_prefix) == ("Query: ", "Passage: ")
  gin.clear_config()


MODEL_FILES = sorted(p for p in glob.glob(str(REPO_ROOT / "gin_configs/models/*.gin"))
                     if not p.endswith("/dual_encoder.gin"))


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_each_model_file_sets_family_beside_the_encoder_config_it_names(path):
  gin.clear_config()
  gin_utils.parse([path], finalize=False)
  assert gin_utils.evaluate("FAMILY") == gin_utils.evaluate("MODEL").encoder_config.family
  gin.clear_config()


def test_family_is_set_by_model_files_only_never_by_a_run_file_beside_them():
  """The eval run has no model to derive it from: its FAMILY names SPM_PATH's kind."""
  setters = []
  for path in glob.glob(str(REPO_ROOT / "gin_configs/**/*.gin"), recursive=True):
    with open(path) as f:
      if any(line.startswith("FAMILY =") for line in f):
        setters.append(path)
  assert sorted(setters) == sorted(MODEL_FILES + [str(REPO_ROOT / "gin_configs/runs/eval.gin")])


@pytest.mark.parametrize("path", [p for p in STUDY_FILES if not p.endswith("/base.gin")],
                         ids=os.path.basename)
def test_full_scale_runs_train_on_the_papers_languages_and_validate_in_english(path):
  """The paper's nine training languages (el and vi unseen), checkpoints chosen on an English-only
  validation set, XQuAD-R and MLQA-R evaluated whole (every language)."""
  gin.clear_config()
  gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'", "CORPUS_DIR = '/tmp/corpus'"], finalize=False)
  assert gin_utils.evaluate("LANGUAGES") == ["ar", "zh", "en", "de", "hi", "ru", "es", "th", "tr"]
  study = gin_utils.bound_arguments("hybridir.study.study_run.register_study_data", [
      "languages", "validation_languages", "validation_file", "out_of_domain_languages"])
  assert study["validation_languages"] == ["en"] and study["validation_file"] is None
  assert study["out_of_domain_languages"] is None
  validation = gin_utils.bound_arguments("validation/hybridir.data.input_pipeline.HybridInput",
                                         ["mixture_or_task_name", "split"])
  assert validation == {"split": "train", "mixture_or_task_name": (
      f"{study_run.validation_record_name(gin_utils.evaluate('CORPUS_NAME'))}_hybrid")}
  gin.clear_config()


@pytest.mark.parametrize("name", CPU_STUDY_FILES)
def test_cpu_studies_keep_their_four_languages_in_and_out_of_domain(name):
  gin.clear_config()
  gin_utils.parse([f"gin_configs/runs/study/{name}.gin"],
                  ["MODEL_DIR = '/tmp/x'", "SPM_PATH = '/tmp/spm.model'",
                   "INIT_CHECKPOINT = '/tmp/ckpt'"], finalize=False)
  study = gin_utils.bound_arguments("hybridir.study.study_run.register_study_data", [
      "languages", "out_of_domain_languages", "corpus_dir", "data_dir"])
  assert study["languages"] == study["out_of_domain_languages"] == ["de", "en", "es", "vi"]
  assert study["corpus_dir"] == f"{study['data_dir']}/xquad-r"  # XQuAD-R: in-domain.
  gin.clear_config()


@pytest.mark.parametrize("path,kernels", [
    *[(p, "portable") for p in STUDY_FILES if not p.endswith("/base.gin")],
    *[(f"gin_configs/runs/{p}.gin", "cpu")
      for p in ("smoke", *(f"study/{name}" for name in CPU_STUDY_FILES))]],
    ids=os.path.basename)
def test_cpu_runs_use_the_cpu_layers_and_tpu_runs_the_portable_ones(path, kernels):
  """The CPU demo and smoke run keep the XLA:CPU-tuned layers (their numbers unchanged); the
  study's TPU runs get the portable default (hybridir.models.layers)."""
  gin.clear_config()
  gin_utils.parse([path], ["MODEL_DIR = '/tmp/x'", "CORPUS_DIR = '/tmp/corpus'",
                           "SPM_PATH = '/tmp/spm.model'"], finalize=False)
  assert gin_utils.evaluate("MODEL").encoder_config.kernels == kernels
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


def sweep_dry_run(tmp_path, *options, every_command=False) -> list[str]:
  """The hybridir.main jobs launch/study_sweep.sh --dry-run prints (gcloud faked); or, with
  every_command, every command it prints."""
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\nif [ \"$1 $2\" = 'config get-value' ]; then echo my-project; fi\n")
  fake.chmod(0o755)
  # PYTHON: the MIRACL stage's plan (tests/test_miracl.py) is not under test here.
  env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", PYTHON="true")
  result = subprocess.run(
      ["launch/study_sweep.sh", "--bucket", "gs://b/study", "--corpus_dir", "gs://b/corpus",
       "--zone", "us-central2-b", "--accelerator_type", "v4-32", *options, "--dry-run"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
  return lines if every_command else [line for line in lines if "hybridir.main" in line]


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


def test_sweep_with_miracl_evaluates_each_run_on_its_kept_export_after_training(tmp_path):
  commands = sweep_dry_run(tmp_path, "--models", "mt5_base", "--strategies", "hybrid cross",
                           "--seeds", "0", "--miracl_dir", "gs://b/miracl/", "--miracl_languages",
                           "sw te", every_command=True)
  jobs = [(i, c) for i, c in enumerate(commands) if "hybridir.main" in c]
  deletes = [i for i, c in enumerate(commands) if "tpu-vm delete" in c]
  assert len(jobs) == 2 * 2 and len(deletes) == 2  # Per run: train, then MIRACL, which deletes.
  for (train_at, train), (stage_at, stage), delete_at, strategy in zip(
      jobs[::2], jobs[1::2], deletes, ("hybrid", "cross")):
    run = f"gs://b/study/mt5_base_{strategy}_seed0"
    assert "runs/study/mt5_base.gin" in train and "EXPORT_DIR" in train
    assert f"{run}/export" in train and "miracl.gin" not in train
    assert "runs/study/miracl.gin" in stage and f"MODEL_DIR=\"{run}/miracl\"" in stage
    assert "ENCODER_PATH" in stage and f"{run}/export" in stage
    assert "MIRACL_DIR" in stage and "gs://b/miracl" in stage and "gs://b/miracl/" not in stage
    assert "MIRACL_LANGUAGES=[" in stage and "sw" in stage and "te" in stage
    assert train_at < stage_at < delete_at  # The slice outlives training; MIRACL deletes it.


def test_sweep_without_miracl_deletes_each_slice_after_training_and_keeps_no_export(tmp_path):
  commands = sweep_dry_run(tmp_path, "--models", "labse", "--strategies", "hybrid", "--seeds",
                           "0", every_command=True)
  jobs = [c for c in commands if "hybridir.main" in c]
  assert len(jobs) == 1 and "EXPORT_DIR" not in jobs[0] and "miracl" not in jobs[0]
  assert "tpu-vm delete" in commands[-1]


def test_train_file_macros_reach_the_trainers_checkpoint_config():
  gin.clear_config()
  gin_utils.parse(["gin_configs/runs/smoke.gin"], ["CHECKPOINT_PERIOD = 7",
                                                   "ALLOW_CHANGED_RUN = True"], finalize=False)
  configs = gin_utils.bound_arguments("hybridir.training.trainer.train",
                                      ["checkpoint_cfg", "eval_cfg"])
  checkpoint_cfg = configs["checkpoint_cfg"]
  assert (checkpoint_cfg.period, checkpoint_cfg.allow_changed_run) == (7, True)
  assert configs["eval_cfg"].input is None  # A plain training run does not evaluate.
  gin.clear_config()


def test_macro_gives_the_default_only_when_the_macro_is_unset():
  gin.clear_config()
  gin.parse_config("STEPS = 3\nDIR = None")
  try:
    assert gin_utils.macro("STEPS") == gin_utils.macro("STEPS", 7) == 3
    assert gin_utils.macro("DIR", "unused") is None
    assert gin_utils.macro("EVAL_DIR", None) is None
    with pytest.raises(ValueError, match="EVAL_DIR"):
      gin_utils.macro("EVAL_DIR")
  finally:
    gin.clear_config()
