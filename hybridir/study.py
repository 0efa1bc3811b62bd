"""The study, end to end: mono vs cross vs hybrid batches, mT5 vs XLM-R, in- vs out-of-domain.

For each model family, a SentencePiece vocabulary is trained on the training articles of XQuAD-R;
then for each strategy (alpha = 1, 0, 0.5) and seed a dual encoder is trained from scratch on the
parallel QA pairs of those articles, and evaluated zero-shot on the held-out XQuAD-R articles
(in-domain) and on MLQA-R (out-of-domain) in the monolingual, cross-lingual and multilingual
settings. Each cell of the report is the mean over seeds with its standard deviation.

  python -m hybridir.study --data_dir ../shared/data --output_dir out/study

Runs are resumable: a finished run's results are kept and skipped on a rerun.
"""
import dataclasses
import json
import os
import time

from absl import logging
import gin
import jax
import numpy as np

import tasks
from hybridir import corpora
from hybridir import retrieval_data
from hybridir import eval_run
from hybridir import evaluate
from hybridir import export
from hybridir import fs
from hybridir import gin_utils
from hybridir import input_pipeline
from hybridir import optim
from hybridir import partitioning
from hybridir import spm
from hybridir import train_step
from hybridir import trainer
from hybridir import vocab
from hybridir import study_report

# The languages of both XQuAD-R and MLQA-R, so in- and out-of-domain cover the same languages.
SHARED_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")
STRATEGIES = {"monolingual": 1.0, "cross-lingual": 0.0, "hybrid": 0.5}
MODEL_FILES = {"mT5": ("t5", "gin_configs/models/mt5_tiny.gin"),
               "XLM-R": ("xlmr", "gin_configs/models/xlmr_tiny.gin")}
IN_DOMAIN, OUT_OF_DOMAIN = "xquad_r", "mlqa_r"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """The smoke-scale defaults finish in well under an hour on a 2-core CPU."""
  models: tuple[str, ...] = ("mT5", "XLM-R")
  strategies: tuple[str, ...] = ("monolingual", "cross-lingual", "hybrid")
  seeds: tuple[int, ...] = (0, 1)
  languages: tuple[str, ...] = SHARED_LANGUAGES
  train_steps: int = 300
  batch_size: int = 32
  query_length: int = 32
  passage_length: int = 96
  vocab_size: int = 8000
  learning_rates: tuple[tuple[str, float], ...] = (("mT5", 2e-3), ("XLM-R", 1e-3))
  warmup_steps: int = 30
  temperature: float = 0.05
  # Evaluate on the first N questions of each language (None: all); for quick checks only.
  max_questions_per_language: int | None = None

  def __post_init__(self):
    for name in self.models:
      if name not in MODEL_FILES:
        raise ValueError(f"StudyConfig.models: unknown {name!r}; expected {sorted(MODEL_FILES)}")
    for name in self.strategies:
      if name not in STRATEGIES:
        raise ValueError(f"StudyConfig.strategies: unknown {name!r}; expected {sorted(STRATEGIES)}")
    if not self.seeds:
      raise ValueError("StudyConfig.seeds must name at least one seed")


def train_vocabulary(corpus_dir: str, family: str, config: StudyConfig, output_dir: str) -> str:
  """SentencePiece on the training articles only (the held-out articles stay unseen)."""
  path = os.path.join(output_dir, "vocab", family)
  if fs.exists(path + ".model"):
    return path + ".model"
  corpus = corpora.load_parallel_corpus(corpus_dir, languages=list(config.languages))
  train, _ = corpus.split_by_article(tasks.qa.TEST_FRACTION, seed=0)
  return spm.train_on_corpus(train, family, config.vocab_size, path,
                             source=f"{corpus_dir} (training articles)")


def limit_questions(dataset: retrieval_data.RetrievalDataset, limit: int | None):
  """The dataset with at most `limit` questions per language (candidates unchanged)."""
  if limit is None:
    return dataset
  return retrieval_data.RetrievalDataset(dataset.name, {lang: items[:limit] for lang, items in
                                                 dataset.questions.items()}, dataset.candidates)


def build_model(model_name: str, vocab_size: int):
  gin.clear_config()
  gin_utils.parse([MODEL_FILES[model_name][1]], [f"VOCAB_SIZE = {vocab_size}"], finalize=False)
  return gin_utils.evaluate("MODEL")


def check_held_out(train_mixture: str, in_domain: retrieval_data.RetrievalDataset) -> None:
  """Fails early if a held-out question's QA item is also a training pair."""
  train_ids = set(tasks.get_hybrid_mixture(train_mixture).corpus.pair_ids())
  test_ids = {q.question_id for items in in_domain.questions.values() for q in items}
  overlap = train_ids & test_ids
  if overlap:
    raise RuntimeError(f"{len(overlap)} held-out XQuAD-R questions are also training pairs, "
                       f"e.g. {sorted(overlap)[:3]}")


def train_and_evaluate(run_dir, model, mixture, spm_path, learning_rate, seed, config, datasets):
  """One cell: train from scratch, then evaluate every dataset; results cached in run_dir."""
  results_path = os.path.join(run_dir, "results.json")
  if fs.exists(results_path):
    with fs.open(results_path) as f:
      return json.load(f)
  lengths = {"query": config.query_length, "passage": config.passage_length}
  train_input = input_pipeline.HybridInput(mixture, lengths, config.batch_size, seed=seed)
  schedule = optim.learning_rate_schedule(learning_rate, min(config.warmup_steps, config.train_steps // 10), config.train_steps,
                                          "linear")
  result = trainer.train(
      model=model, train_input=train_input, task_feature_lengths=lengths,
      train_steps=config.train_steps, model_dir=run_dir, learning_rate_schedule=schedule,
      optimizer_fn=lambda learning_rate_schedule: optim.create_optimizer(
          "adamw", learning_rate_schedule, weight_decay=0.01),
      loss_config=train_step.LossConfig(temperature=config.temperature), seed=seed,
      mesh=partitioning.create_mesh(1, devices=jax.devices()[:1]),
      checkpoint_period=config.train_steps, log_period=100)
  params = jax.device_get(result.state.params["model"])
  encoder = export.Encoder(model, params, train_input.vocabulary,
                           max_length=config.passage_length, batch_size=128,
                           text_format=train_input.text_format)
  evaluation = {name: eval_run.evaluate_dataset(encoder, dataset) for name, dataset in datasets}
  losses = [h["loss"] for h in result.history]
  out = {"evaluation": evaluation,
         "train": {"first_loss": float(np.mean(losses[:10])) if losses else None,
                   "last_loss": float(np.mean(losses[-10:])) if losses else None,
                   "steps": config.train_steps}}
  evaluate.write_text_atomically(results_path, json.dumps(out, allow_nan=True))
  return out


def run_study(data_dir: str, output_dir: str, config: StudyConfig | None = None) -> dict:
  """Trains and evaluates every (model, strategy, seed); writes the report; returns its paths."""
  config = config or StudyConfig()  # Built before build_model clears gin.
  corpus_dir = os.path.join(data_dir, "xquad-r")
  for folder in (corpus_dir, os.path.join(data_dir, "mlqa-r")):
    if not fs.isdir(folder):
      raise FileNotFoundError(f"{folder}: not found (set --data_dir)")
  learning_rates = dict(config.learning_rates)
  cells = [(m, s, seed) for m in config.models for s in config.strategies for seed in config.seeds]
  results, started, done = {}, time.time(), 0
  for model_name in config.models:
    family = MODEL_FILES[model_name][0]
    spm_path = train_vocabulary(corpus_dir, family, config, output_dir)
    vocabulary = vocab.get_vocabulary(family, spm_path)
    model = build_model(model_name, vocabulary.vocab_size)
    tasks.register_lareqa(IN_DOMAIN, data_dir, family, spm_path, list(config.languages),
                          split="test")
    tasks.register_lareqa(OUT_OF_DOMAIN, data_dir, family, spm_path, list(config.languages))
    datasets = [(name, limit_questions(dataset, config.max_questions_per_language))
                for name, dataset in tasks.evaluation_mixture_datasets("lareqa")]
    for strategy in config.strategies:
      name = f"study_{family}_{strategy.replace('-', '_')}"
      tasks.register_parallel_qa(name, corpus_dir, family, spm_path, list(config.languages),
                                 split="train", alpha=STRATEGIES[strategy])
      check_held_out(f"{name}_hybrid", dict(datasets)[IN_DOMAIN])
      for seed in config.seeds:
        run_dir = os.path.join(output_dir, "runs", f"{family}_{name.split('_', 2)[2]}_seed{seed}")
        logging.info("run %d/%d: %s, %s batches, seed %d", done + 1, len(cells), model_name,
                     strategy, seed)
        results[(model_name, strategy, seed)] = train_and_evaluate(
            run_dir, model, f"{name}_hybrid", spm_path, learning_rates[model_name], seed, config,
            datasets)
        done += 1
        elapsed = time.time() - started
        logging.info("%d/%d runs done in %.0f s; about %.0f s to go", done, len(cells), elapsed,
                     elapsed / done * (len(cells) - done))
  return study_report.write(output_dir, results, config, datasets={
      name: dataset.stats() for name, dataset in datasets})


def main(argv):
  del argv
  from absl import flags
  values = flags.FLAGS
  gin_utils.parse(values.gin_file, values.gin_bindings)
  report = run_study(values.data_dir, values.output_dir)
  print(f"\nReport: {report['markdown']}")


if __name__ == "__main__":
  from absl import app
  from absl import flags
  flags.DEFINE_string("data_dir", os.environ.get("HYBRIDIR_DATA_DIR", "../shared/data"),
                      "Folder with xquad-r/ and mlqa-r/.")
  flags.DEFINE_string("output_dir", "out/study", "Where runs, vocabularies and the report go.")
  flags.DEFINE_multi_string("gin_file", [], "Gin files, e.g. to change StudyConfig.")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. StudyConfig.seeds=(0,).")
  app.run(main)
