"""One study run, the same for the CPU demo and the TPU sweep: train, pick, export, evaluate.

`gin_configs/runs/study/base.gin` binds `RUN = @study_run.train_and_evaluate` and
`SETUP = [@study_run.register_study_data()]`; `python -m hybridir.main` runs it for one
(model, strategy = ALPHA, SEED) on a TPU (launch/study_sweep.sh), and `python -m hybridir.study`
runs the same gin files for every cell of the CPU demo. Each run writes
`MODEL_DIR/study_results.json`, which the study report reads (study_report, study_gather).

Data: the training corpus is one record (`{CORPUS_NAME}_hybrid`) whose articles are parted into
seqio splits: `test` (`corpora.TEST_FRACTION` of the articles, the in-domain test set) and the
rest, again parted into `train` (fit) and `validation`. The model trains on `train`, the
checkpoint with the lowest loss on `validation` is exported, and the encoder is evaluated
zero-shot on the in-domain test articles, on MLQA-R (out-of-domain) and on MIRACL when given:
full pools (evaluate.evaluate_settings) and size-matched pools with chance (study_eval).
"""
import dataclasses
import json
import os
import tempfile
from typing import Callable, Sequence

from absl import logging
import jax
import numpy as np

import tasks
from hybridir import artifacts
from hybridir import checkpoints
from hybridir import corpora
from hybridir import encoder as encoder_lib
from hybridir import eval_run
from hybridir import evaluate
from hybridir import export
from hybridir import fs
from hybridir import importers
from hybridir import input_pipeline
from hybridir import partitioning
from hybridir import retrieval_data
from hybridir import study_eval
from hybridir import text as text_lib
from hybridir import train_step
from hybridir import trainer

IN_DOMAIN, OUT_OF_DOMAIN = "xquad_r", "mlqa_r"
RESULTS_FILE = "study_results.json"
VALIDATION_SEED = 1  # The fit/validation split of the train articles (test/train uses seed 0).


def article_splits(corpus_dir: str, languages: Sequence[str] | None,
                   validation_fraction: float) -> dict[str, list[str]]:
  """Article titles of the seqio splits `train` (fit) and `validation`, the two parts of the
  corpus's train articles."""
  corpus = corpora.load_parallel_corpus(corpus_dir, languages=languages)
  fit, validation = corpus.select_articles("train").split_by_article(validation_fraction,
                                                                     seed=VALIDATION_SEED)
  return {"train": sorted(fit.article_ids()), "validation": sorted(validation.article_ids())}


def register_study_data(*, corpus_name: str, corpus_dir: str, family: str, spm_path: str,
                        languages: Sequence[str] | None, data_dir: str, alpha: float,
                        validation_fraction: float = 0.1, validation_alpha: float = 1.0,
                        in_domain_corpus_dir: str | None = None,
                        miracl: Sequence[dict] = (),
                        text_format: text_lib.TextFormat = text_lib.TextFormat()) -> None:
  """Registers the corpus `{corpus_name}_hybrid`, with splits `train` (fit articles) and
  `validation` (monolingual batches, `validation_alpha`), and the evaluation mixtures: `lareqa`
  (in-domain test articles, MLQA-R) and `miracl` (each language given).

  in_domain_corpus_dir: the LAReQA folder whose test articles are in-domain (default: data_dir's
  XQuAD-R). When it is the training corpus (the demo), the in-domain set is that record's `test`
  split (`tasks.register_lareqa_split`); otherwise the folder is registered on its own.
  miracl: dicts of register_miracl's language, topics_tsv, qrels_trec and corpus_jsonl.
  """
  in_domain_dir = retrieval_data.lareqa_folder(in_domain_corpus_dir or data_dir, IN_DOMAIN)
  same_corpus = fs.abspath(in_domain_dir).rstrip("/") == fs.abspath(corpus_dir).rstrip("/")
  logging.info("in-domain test set: %s", f"the test split of {corpus_name}_hybrid" if same_corpus
               else f"the test articles of {in_domain_dir}")
  splits = article_splits(corpus_dir, languages, validation_fraction)
  if same_corpus:  # The in-domain test articles are the training corpus's third split.
    splits["test"] = "test"
  record = tasks.register_parallel_qa(corpus_name, corpus_dir, family, spm_path, languages,
                                      splits=splits, text_format=text_format, alpha=alpha,
                                      split_options={"validation": {"alpha": validation_alpha}})
  if same_corpus:
    tasks.register_lareqa_split(IN_DOMAIN, record.name, "test")
  else:
    tasks.register_lareqa(IN_DOMAIN, in_domain_dir, family, spm_path, languages, split="test")
  tasks.register_lareqa(OUT_OF_DOMAIN, data_dir, family, spm_path, languages)
  tasks.unregister_miracl()  # `miracl` is this study's languages only.
  for entry in miracl:
    tasks.register_miracl(family=family, spm_path=spm_path, **entry)


def study_datasets(with_miracl: bool) -> list:
  """(name, RetrievalDataset) of the LAReQA pair, then of MIRACL's registered languages."""
  datasets = tasks.evaluation_mixture_datasets("lareqa")
  if with_miracl:
    datasets += tasks.evaluation_mixture_datasets("miracl")
  return datasets


def check_held_out(train_mixture: str, in_domain: retrieval_data.RetrievalDataset) -> None:
  """Fails if an in-domain question's QA item is a pair the run trains or validates on (the
  corpus's `train` and `validation` splits)."""
  corpus = tasks.get_hybrid_mixture(train_mixture)
  seen = {pair_id for split in corpus.splits if split != "test"
          for pair_id in corpus.corpora[split].pair_ids()}
  test_ids = {q.question_id for items in in_domain.questions.values() for q in items}
  overlap = seen & test_ids
  if overlap:
    raise RuntimeError(f"{len(overlap)} in-domain test questions are also training or validation "
                       f"pairs ({train_mixture}), e.g. {sorted(overlap)[:3]}")


def limit_questions(dataset: retrieval_data.RetrievalDataset, limit: int | None):
  """The dataset with at most `limit` questions per language (candidates unchanged)."""
  if limit is None:
    return dataset
  return dataclasses.replace(dataset, questions={
      language: items[:limit] for language, items in dataset.questions.items()})


POOL_SAMPLE_SEED = 0  # One draw of candidates, the same for every run: the arms share their pools.


def limit_candidates(dataset: retrieval_data.RetrievalDataset, limit: int | None):
  """The dataset with at most `limit` candidates per language: every candidate relevant to one of
  its questions, then a seeded sample of the others (the same draw for every run), in the
  dataset's order. A language whose relevant candidates alone exceed `limit` keeps them all."""
  if limit is None:
    return dataset
  relevant = {c for items in dataset.questions.values() for q in items for c in q.relevant}
  rng = np.random.default_rng(POOL_SAMPLE_SEED)
  candidates = {}
  for language in sorted(dataset.candidates):
    items = dataset.candidates[language]
    kept = {i for i, c in enumerate(items) if c.candidate_id in relevant}
    others = np.array([i for i in range(len(items)) if i not in kept], np.int64)
    extra = max(0, limit - len(kept))
    kept |= set(rng.permutation(others)[:extra].tolist())
    candidates[language] = [items[i] for i in sorted(kept)]
  return dataclasses.replace(dataset, candidates=candidates)


def evaluation_partitions(num_partitions: int, local_devices: int) -> int:
  """The devices evaluation splits each parameter over: the training's count, at most one host's."""
  return min(num_partitions, local_devices)


def best_step(model_dir: str, metric: str, mode: str) -> int | None:
  """The kept checkpoint step with the best `metric` ('min' or 'max' `mode`), from the metrics
  each step was saved with, so also after a restart."""
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"),
                                          best_metric=metric, best_mode=mode)
  try:
    return checkpointer.best_step()
  finally:
    checkpointer.close()


def evaluate_encoder(encoder: encoder_lib.Encoder, datasets, matched_draws: int, seed: int,
                     max_questions_per_language: int | None,
                     max_candidates_per_language: int | None = None) -> dict:
  """Full-pool results with chance for every dataset; size- and distractor-matched pools for the
  LAReQA pair.

  max_questions_per_language, max_candidates_per_language: evaluate the first questions and a
  sample of the candidates of each language (limit_questions, limit_candidates) to fit a budget;
  "full" pools are then these sampled pools.
  """
  inputs = {name: eval_run.encode_dataset(encoder, limit_candidates(
      limit_questions(dataset, max_questions_per_language), max_candidates_per_language))
            for name, dataset in datasets}
  evaluation = {name: {"full": evaluate.evaluate_settings(**inputs[name]),
                       "full_chance": study_eval.full_pool_chance(inputs[name])}
                for name in inputs}
  lareqa = {name: inputs[name] for name in (IN_DOMAIN, OUT_OF_DOMAIN) if name in inputs}
  pool_size = study_eval.matched_pool_size(lareqa)
  for name in lareqa:
    evaluation[name]["matched"] = study_eval.score_dataset(inputs[name], pool_size,
                                                           matched_draws, seed)
  for name, scores in study_eval.score_distractor_matched(lareqa, matched_draws, seed).items():
    evaluation[name]["distractor_matched"] = scores
  return {"datasets": evaluation, "matched_pool_size": pool_size,
          "matched_draws": matched_draws,
          "max_questions_per_language": max_questions_per_language,
          "max_candidates_per_language": max_candidates_per_language}


def objective_losses(model, loss_config: train_step.LossConfig, params_by_name: dict,
                     eval_input, steps: int) -> dict[str, float]:
  """{name: mean in-batch loss (no dropout) over the first `steps` batches of eval_input} for each
  model's params: the same batches for every name."""
  step_fn = jax.jit(train_step.make_eval_step(model, loss_config))
  batches = [eval_input.batch(i) for i in range(steps)]
  return {name: float(np.mean([float(step_fn(train_step.initial_params(params, loss_config),
                                             batch)["loss"]) for batch in batches]))
          for name, params in params_by_name.items()}


def pretrained_params(pretrained: importers.Pretrained, model) -> dict:
  """The model's parameters as the pretrained checkpoint gives them (replicated on this host)."""
  mesh = partitioning.create_mesh(devices=jax.local_devices())
  abstract = importers.abstract_params(model)
  return jax.device_get(pretrained(model, jax.tree.map(
      lambda _: partitioning.replicated(mesh), abstract)))


def train_and_evaluate(*, train: Callable[[], trainer.TrainResult], model_dir: str, model,
                       spm_path: str, train_mixture: str,
                       task_feature_lengths: dict, seed: int, settings: dict,
                       miracl: Sequence[dict] = (), matched_draws: int = 5,
                       max_questions_per_language: int | None = None,
                       max_candidates_per_language: int | None = None,
                       best_metric: str = "eval/loss", best_mode: str = "min",
                       export_dir: str | None = None, num_partitions: int = 1,
                       pretrained: importers.Pretrained | None = None, zero_shot: bool = False,
                       text_format: text_lib.TextFormat = text_lib.TextFormat(),
                       loss_config: train_step.LossConfig = train_step.LossConfig(),
                       batch_size: int = 32, objective_steps: int = 0):
  """Trains (`train`: trainer.train with the run's settings bound), exports the checkpoint with
  the best `best_metric` (the lowest validation loss), evaluates it and writes
  MODEL_DIR/study_results.json; returns what it wrote (or, stopped by SIGTERM, the TrainResult,
  without evaluating).

  settings: the run's settings to record beside the results (the study's macros).
  miracl: as register_study_data's; MIRACL joins the evaluation when given.
  num_partitions: the training mesh's (NUM_PARTITIONS); evaluation splits each parameter over as
  many of this host's devices (at most all of them), so a model trained split is evaluated split.
  export_dir: where the exported encoder is kept (local or gs://; the MIRACL stage reads it).
  pretrained, zero_shot: the run's INIT_CHECKPOINT; with zero_shot, that model is evaluated as it
  is, untrained (the study's zero-shot row), with `text_format` and the task lengths.
  objective_steps > 0: the pretrained and the chosen model's in-batch loss on that many held-out
  batches of the run's own kind (the record's `test` split, the run's ALPHA, `batch_size`): did
  fine-tuning improve the objective it trained on?
  """
  datasets = study_datasets(bool(miracl))
  check_held_out(train_mixture, dict(datasets)[IN_DOMAIN])
  if zero_shot and pretrained is None:
    raise ValueError("a zero-shot run evaluates the pretrained model: set INIT_CHECKPOINT")
  result, step = None, None
  if not zero_shot:
    result = train()
    if result.stopped_early:  # SIGTERM: checkpoint saved; main exits 143 and a rerun resumes.
      return result
    step = best_step(model_dir, best_metric, best_mode)
    if step is None:
      logging.warning("no kept checkpoint was saved with %s (no evaluation ran?): "
                      "exporting the latest checkpoint", best_metric)
  with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, "export")
    if zero_shot:
      artifacts.export_encoder(path, model, pretrained_params(pretrained, model), spm_path,
                               max_length=task_feature_lengths["passage"],
                               query_max_length=task_feature_lengths["query"],
                               text_format=text_format,
                               extra_metadata={"zero_shot": pretrained.path})
    else:
      export.export_from_training_checkpoint(
          model_dir, path, model, spm_path, step=step,
          max_length=max(task_feature_lengths.values()), overwrite=True)
    if export_dir and jax.process_index() == 0:  # One writer, though every process exported.
      artifacts.copy_artifact(path, export_dir)
    encoder = export.load_encoder(path, batch_size=128, num_partitions=evaluation_partitions(
        num_partitions, jax.local_device_count()))
    evaluation = evaluate_encoder(encoder, datasets, matched_draws, seed,
                                  max_questions_per_language, max_candidates_per_language)
  train_record = {"chosen_step": step if not zero_shot else 0, "best_metric": best_metric,
                  "zero_shot": zero_shot,
                  "history": [{k: h[k] for k in ("step", "loss", "accuracy") if k in h}
                              for h in (result.history if result else [])],
                  "validation": [{k: e[k] for k in ("step", "eval/loss", "eval/accuracy")
                                  if k in e} for e in (result.eval_history if result else [])]}
  record = tasks.get_hybrid_mixture(train_mixture)
  if objective_steps and not zero_shot and pretrained is not None and "test" in record.splits:
    held_out = input_pipeline.HybridInput(train_mixture, task_feature_lengths, batch_size,
                                          seed=0, split="test")
    train_record["objective"] = dict(objective_losses(
        model, loss_config, {"pretrained": pretrained_params(pretrained, model),
                             "fine_tuned": checkpoints.restore_params(model_dir, step)[1]},
        held_out, objective_steps), steps=objective_steps, split="test")
  out = {"settings": settings, "evaluation": evaluation, "train": train_record}
  if jax.process_index() == 0:
    fs.write_text_atomically(os.path.join(model_dir, RESULTS_FILE),
                             json.dumps(out, allow_nan=True))
  return out
