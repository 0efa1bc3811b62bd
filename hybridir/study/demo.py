"""The study's CPU demo: a sweep over the same run and gin files as the TPU study.

For each model (mT5, XLM-R: `gin_configs/runs/study/demo_{mt5,xlmr}.gin`, tiny encoders trained
from scratch; LaBSE, demo_labse.gin, on request: --models=mT5,XLM-R,LaBSE), its family's
vocabulary (SentencePiece, WordPiece) is trained on XQuAD-R's training articles; then for each
strategy (X-X-mono alpha = 1, X-Y alpha = 0, hybrid alpha = 0.5) and seed, the study's run
(`hybridir.study.study_run.train_and_evaluate`, what `python -m hybridir.main` runs for
launch/study_sweep.sh) trains, picks the checkpoint by validation loss, and evaluates it on the
held-out XQuAD-R articles (in-domain) and MLQA-R (out-of-domain). The report (study_report) then
computes the answer with confidence intervals.

  python -m hybridir.study --data_dir ../shared/data --output_dir out/study

Runs are resumable: a run whose study_results.json exists is kept and skipped on a rerun.
"""
import dataclasses
import functools
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from hybridir import console
from hybridir.data import corpora
from hybridir.data import spm
from hybridir.data import vocab
from hybridir import errors
from hybridir import fs
from hybridir import gin_run
from hybridir import gin_utils
from hybridir.models import families
from hybridir import packaged_models
from hybridir.study import study_layout
from hybridir.study import study_report
from hybridir.study import study_results
from hybridir.study import study_run
import tasks

STRATEGIES, ZERO_SHOT = study_layout.STRATEGIES, study_layout.ZERO_SHOT
MODEL_FILES = {"mT5": "gin_configs/runs/study/demo_mt5.gin",
               "XLM-R": "gin_configs/runs/study/demo_xlmr.gin",
               "LaBSE": "gin_configs/runs/study/demo_labse.gin",
               "MiniLM": "gin_configs/runs/study/pretrained_minilm.gin"}


@functools.lru_cache(maxsize=None)
def family(model: str) -> str:
  """The encoder family the model's demo file (or a file it includes) sets as FAMILY."""
  return gin_utils.file_macro(MODEL_FILES[model], "FAMILY")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Which cells the demo runs; `bindings` (gin, e.g. 'TRAIN_STEPS = 3') apply to every run."""
  models: tuple[str, ...] = ("mT5", "XLM-R")
  strategies: tuple[str, ...] = ("X-X-mono", "X-Y", "hybrid")
  seeds: tuple[int, ...] = (0, 1, 2)
  bindings: tuple[str, ...] = ()

  def __post_init__(self):
    for name in self.models:
      if name not in MODEL_FILES:
        raise ValueError(f"StudyConfig.models: unknown {name!r}; expected {sorted(MODEL_FILES)}")
    for name in self.strategies:
      if name not in STRATEGIES:
        raise ValueError(f"StudyConfig.strategies: unknown {name!r}; expected {sorted(STRATEGIES)}")
    if not self.seeds:
      raise ValueError("StudyConfig.seeds must name at least one seed")


@functools.lru_cache(maxsize=None)
def packaged_model(model: str) -> str | None:
  """The packaged pretrained model (hybridir.packaged_models) the model's file starts from, or
  None for a model trained from scratch."""
  try:
    return gin_utils.file_macro(MODEL_FILES[model], "PACKAGED_MODEL")
  except ValueError:
    return None


def cells(config: "StudyConfig") -> list[tuple[str, str, int]]:
  """(model, strategy, seed) of every run: each strategy and seed, and for a pretrained model
  first its zero-shot row (seed 0: nothing of it is random but the matched pools' draws)."""
  out = []
  for model in config.models:
    if packaged_model(model):
      out.append((model, ZERO_SHOT, 0))
    out += [(model, strategy, seed) for strategy in config.strategies for seed in config.seeds]
  return out


def run_name(model: str, strategy: str, seed: int) -> str:
  """The run folder (study_layout): `{prefix}_{mono|cross|hybrid|zeroshot}_seed{seed}`."""
  return study_layout.run_name(study_layout.DEMO_PREFIXES[model], strategy, seed)


def train_vocabulary(gin_file: str, bindings: list[str], output_dir: str) -> str:
  """The family's vocabulary on the corpus's train articles only (test articles stay unseen);
  cached."""
  run = gin_utils.macro_values([gin_file], bindings,
                              ("FAMILY", "CORPUS_DIR", "LANGUAGES", "SPM_VOCAB_SIZE"))
  family_name, corpus_dir = run["FAMILY"], run["CORPUS_DIR"]
  path = spm.vocabulary_path(family_name, os.path.join(output_dir, "vocab", family_name))
  if not fs.exists(path):
    corpus = corpora.load_parallel_corpus(corpus_dir, languages=run["LANGUAGES"])
    path = spm.train_on_corpus(corpus.select_articles("train"), family_name, run["SPM_VOCAB_SIZE"],
                               os.path.join(output_dir, "vocab", family_name),
                               source=f"{corpus_dir} (training articles)")
  return path


def pretrained_model(model: str) -> tuple[str, str]:
  """(INIT_CHECKPOINT, SPM_PATH) of a pretrained model: its packaged folder, unpacked once into
  the cache (packaged_models), and the vocabulary file in it."""
  folder = packaged_models.folder(packaged_model(model))
  # families.get imports the family's module, which registers the vocabulary kinds it reads.
  return folder, vocab.find_vocabulary_file(folder, families.get(family(model)).name)


def cell_bindings(data_dir: str, model_dir: str, spm_path: str, family_name: str, alpha: float,
                  seed: int, extra=(), init_checkpoint: str | None = None,
                  zero_shot: bool = False) -> list[str]:
  """The gin bindings of one demo run (the same ones a `hybridir.main` run would take); the
  chosen checkpoint's encoder is kept at MODEL_DIR/export. A model trained from scratch sizes its
  embedding to its vocabulary (VOCAB_SIZE); a pretrained one starts from `init_checkpoint`, and
  `zero_shot` evaluates it untrained."""
  bindings = [f"DATA_DIR = {data_dir!r}", f"CORPUS_DIR = {os.path.join(data_dir, 'xquad-r')!r}",
              f"MODEL_DIR = {model_dir!r}", f"SPM_PATH = {spm_path!r}", f"ALPHA = {alpha}",
              f"SEED = {seed}", f"EXPORT_DIR = {os.path.join(model_dir, 'export')!r}"]
  if init_checkpoint:
    bindings += [f"INIT_CHECKPOINT = {init_checkpoint!r}", f"ZERO_SHOT = {zero_shot}"]
  else:
    bindings.append(f"VOCAB_SIZE = {tasks.get_vocabulary(family_name, spm_path).vocab_size}")
  return bindings + list(extra)


def run_cell(gin_file: str, bindings: list[str]) -> dict:
  """One run, exactly as `python -m hybridir.main --gin_file=FILE --gin.KEY=VALUE...` runs it."""
  return gin_run.run_config([gin_file], bindings)


def run_line(position: str, name: str, result: study_results.RunResults,
             seconds: float | None) -> str:
  """The one line the study prints for a run: its chosen step, each dataset's multilingual mAP,
  and its time (None: done by an earlier invocation, kept)."""
  maps = ", ".join(f"{dataset} {values.average('multilingual'):.3f}"
                   for dataset, values in result.evaluation.datasets.items())
  step = "zero-shot" if result.train.zero_shot else f"step {result.train.chosen_step} chosen"
  took = "done earlier, kept" if seconds is None else f"{seconds:.0f} s"
  return f"run {position} {name}: {step}; multilingual mAP {maps}; {took}"


def run_study(data_dir: str, output_dir: str, config: StudyConfig | None = None) -> dict:
  """Runs every (model, strategy, seed) not yet done, printing a line for each; writes the
  report; returns its paths."""
  config = config or StudyConfig()
  for folder in ("xquad-r", "mlqa-r"):
    if not fs.isdir(os.path.join(data_dir, folder)):
      raise FileNotFoundError(f"{os.path.join(data_dir, folder)}: not found (set --data_dir)")
  sweep = cells(config)
  results, started, vocabularies, durations = {}, time.time(), {}, []
  for number, (model, strategy, seed) in enumerate(sweep, 1):
    gin_file = MODEL_FILES[model]
    if model not in vocabularies:
      base = [f"DATA_DIR = {data_dir!r}", f"CORPUS_DIR = {os.path.join(data_dir, 'xquad-r')!r}",
              *config.bindings]
      vocabularies[model] = (pretrained_model(model) if packaged_model(model)
                             else (None, train_vocabulary(gin_file, base, output_dir)))
    init_checkpoint, spm_path = vocabularies[model]
    name = run_name(model, strategy, seed)
    model_dir = os.path.join(output_dir, "runs", name)
    results_path = os.path.join(model_dir, study_run.RESULTS_FILE)
    run_started, seconds = time.time(), None
    if not fs.exists(results_path):
      out = run_cell(gin_file, cell_bindings(
          data_dir, model_dir, spm_path, family(model), STRATEGIES.get(strategy, 0.5), seed,
          config.bindings, init_checkpoint, zero_shot=strategy == ZERO_SHOT))
      if getattr(out, "stopped_early", False):
        logging.warning("SIGTERM: %s saved its checkpoint; rerun the demo to resume", model_dir)
        sys.exit(errors.PREEMPTED_EXIT_CODE)
      seconds = time.time() - run_started
      durations.append(seconds)
    results[model, strategy, seed] = study_results.read(results_path)
    line = run_line(f"{number}/{len(sweep)}", f"{name} ({model}, {strategy}, seed {seed})",
                    results[model, strategy, seed], seconds)
    if durations and number < len(sweep):  # The runs made now tell how long the rest take.
      left = sum(durations) / len(durations) * (len(sweep) - number)
      line += f"; about {left:.0f} s to go" if left < 90 else f"; about {left / 60:.0f} min to go"
    logging.info(line)
  return study_report.write(output_dir, results, elapsed_seconds=time.time() - started,
                            kept_runs=len(sweep) - len(durations))


def summary(report_markdown: str) -> str:
  """The report's answer (its first paragraph) as one line of plain text."""
  with fs.open(report_markdown) as f:
    paragraphs = f.read().split("\n\n")
  return " ".join(paragraphs[1].replace("**", "").split()) if len(paragraphs) > 1 else ""


def config_from_flags(values) -> StudyConfig:
  """The sweep the command line asks for: --models, --strategies, --seeds (each defaulting to
  StudyConfig's), --gin_bindings applied to every run."""
  if values.gin_file:
    raise app.UsageError("hybridir.study runs the demo's own gin files; pass bindings for every run "
                         "with --gin_bindings (e.g. --gin_bindings='TRAIN_STEPS = 20')")
  try:
    seeds = tuple(int(seed) for seed in values.seeds or StudyConfig.seeds)
  except ValueError:
    raise app.UsageError(f"--seeds must be integers, got {values.seeds}") from None
  try:
    return StudyConfig(models=tuple(values.models or StudyConfig.models),
                       strategies=tuple(values.strategies or StudyConfig.strategies),
                       seeds=seeds, bindings=tuple(values.gin_bindings))
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def main(argv):
  del argv
  config = config_from_flags(flags.FLAGS)
  values = flags.FLAGS
  with gin_run.one_line_errors():
    fs.check_writable(values.output_dir, "--output_dir")
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR") and not fs.is_remote(values.output_dir):
      # The runs of a sweep compile the same programs (train step, encode buckets): once each.
      import jax  # pylint: disable=import-outside-toplevel
      jax.config.update("jax_compilation_cache_dir",
                        os.path.join(values.output_dir, "compilation_cache"))
    report = run_study(values.data_dir, values.output_dir, config)
  print(summary(report["markdown"]), file=sys.stderr)
  console.finish(f"the report {report['markdown']} (plots and per-run results beside it)",
                 f"cat {report['markdown']}")


if __name__ == "__main__":
  flags.DEFINE_string("data_dir", fs.data_root(), "Folder with xquad-r/ and mlqa-r/ "
                      "(default: $HYBRIDIR_DATA_DIR, else ../shared/data).")
  flags.DEFINE_string("output_dir", "out/study", "Where runs, vocabularies and the report go.")
  flags.DEFINE_list("models", None, f"Models to run, of {sorted(MODEL_FILES)} (default: "
                    "mT5 and XLM-R).")
  flags.DEFINE_list("strategies", None, f"Batch strategies, of {sorted(STRATEGIES)} (default: all).")
  flags.DEFINE_list("seeds", None, "Seeds (default: 0,1,2).")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings for every run, e.g. "
                            "'TRAIN_STEPS = 20' (as hybridir.main takes them).")
  flags.DEFINE_multi_string("gin_file", [], "Not taken: the demo runs its own gin files; pass "
                            "bindings with --gin_bindings.")
  console.run_app(main)
