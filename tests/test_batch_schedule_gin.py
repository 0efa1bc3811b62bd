"""A batch is described once: one binding of ALPHA (with BATCH_SIZE and SEED) reaches the sampler
through train.gin's hybrid.HybridSchedule, for a training run and a study run alike."""
import gin
import pytest

from hybridir.data import hybrid
from hybridir import errors
from hybridir import gin_utils
from tests.test_tasks import spm_models  # noqa: F401  (the shared SentencePiece fixture)

RUN_FILES = {"train": ["gin_configs/runs/train.gin", "gin_configs/models/mt5_tiny.gin"],
             "study": ["gin_configs/runs/study/demo_mt5.gin"]}


def built_inputs(gin_files, bindings) -> dict:
  """{'train': the training input, 'validation': the validation input or None} as the trainer
  builds them from the parsed files (SETUP run first, as hybridir.main does)."""
  gin_utils.parse(gin_files, bindings)
  for call in gin_utils.macro("SETUP", []):  # As hybridir.main runs it.
    call.scoped_configurable_fn()
  configs = gin_utils.bound_arguments("hybridir.training.trainer.train",
                                      ["train_input", "eval_cfg"])
  validation = configs["eval_cfg"].input
  build = lambda factory: factory(host_index=0, host_count=1)  # As trainer._host_input does.
  return {"train": build(configs["train_input"]),
          "validation": build(validation) if validation is not None else None}


@pytest.mark.parametrize("run", RUN_FILES)
def test_one_binding_of_alpha_reaches_the_sampler_of_train_gin_and_the_study(
    run, data_dir, spm_models, tmp_path):  # noqa: F811
  bindings = [f"MODEL_DIR = '{tmp_path / 'run'}'", f"CORPUS_DIR = '{data_dir / 'xquad-r'}'",
              f"SPM_PATH = '{spm_models['t5']}'", "LANGUAGES = ['de', 'en']",
              "TASK_FEATURE_LENGTHS = {'query': 16, 'passage': 32}", "BATCH_SIZE = 8",
              "SEED = 3", "ALPHA = 0.25"]  # As `--gin.ALPHA=0.25` and the others bind them.
  gin.clear_config()
  try:
    inputs = built_inputs(RUN_FILES[run], bindings)
    schedule = hybrid.HybridSchedule(batch_size=8, alpha=0.25, seed=3)
    train = inputs["train"]
    assert train._sampler.schedule == schedule
    assert (train.batch_size, train.seed, train.identity()["sampler"]["alpha_mono"]) == (8, 3, 0.25)
    if run == "study":
      # Validation: the same road, scoped (monolingual, seed 0); the objective's batches are the
      # training input's schedule.
      assert inputs["validation"]._sampler.schedule == hybrid.HybridSchedule(8, alpha=1.0)
      objective = gin_utils.bound_arguments("hybridir.study.study_run.train_and_evaluate",
                                            ["schedule"])["schedule"]
      assert objective == schedule
  finally:
    gin.clear_config()


def test_a_bad_alpha_fails_once_naming_the_parameter(data_dir, spm_models, tmp_path):  # noqa: F811
  gin.clear_config()
  try:
    gin_utils.parse(RUN_FILES["train"], [f"MODEL_DIR = '{tmp_path}'", "CORPUS_DIR = '/nowhere'",
                                         f"SPM_PATH = '{spm_models['t5']}'", "ALPHA = 1.5"])
    train_input = gin_utils.bound_arguments("hybridir.training.trainer.train", ["train_input"])
    with pytest.raises(errors.SettingError, match=r"HybridSchedule.alpha must be in \[0, 1\].*found 1.5"):
      train_input["train_input"](host_index=0, host_count=1)  # Before any data is read.
  finally:
    gin.clear_config()
