"""One study run, the same for the CPU demo and the TPU sweep: train, pick, export, evaluate.

`gin_configs/runs/study/base.gin` binds `RUN = @study_run.train_and_evaluate` and
`SETUP = [@study_run.register_study_data()]`; `python -m hybridir.main` runs it for one
(model, strategy = ALPHA, SEED) on a TPU (launch/study_sweep.sh), and `python -m hybridir.study`
runs the same gin files for every cell of the CPU demo. Each run writes
`MODEL_DIR/study_results.json`, which the study report reads (study_report, study_gather).

Data (register_study_data): the training corpus is one record (`{CORPUS_NAME}_hybrid`) whose
articles are parted into seqio splits: `test` (`corpora.TEST_FRACTION` of the articles: the
in-domain test set, IN_DOMAIN, at every scale) and the rest, `train` (fit) and `validation`. The
model trains on `train`; the checkpoint with the lowest loss on the validation corpus (the English
part of the validation articles, as the paper's English-only SQuADShifts; or a SQuAD file given)
is exported, and the encoder is evaluated zero-shot in domain and out of domain (XQuAD-R and
MLQA-R whole, unless one is the training corpus; MIRACL when given): full pools
(evaluate.evaluate_settings) and, per out-of-domain LAReQA set, size-matched pools with chance on
the languages it shares with the in-domain set (study_eval).
"""
import dataclasses
import os
import tempfile
from typing import Callable, Sequence

from absl import logging
import jax
import numpy as np

import tasks
from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir.data import retrieval_data
from hybridir.data import text as text_lib
from hybridir.evaluation import eval_run
from hybridir.evaluation import evaluate
from hybridir.evaluation import metrics
from hybridir.export import artifacts
from hybridir.export import encoder as encoder_lib
from hybridir.export import exporter
from hybridir import fs
from hybridir.study import study_eval
from hybridir.study import study_results
from hybridir.study import study_stats
from hybridir.study import study_tables
from hybridir.training import checkpoints
from hybridir.training import importers
from hybridir.training import partitioning
from hybridir.training import run_dir
from hybridir.training import train_step
from hybridir.training import trainer

IN_DOMAIN = study_tables.IN_DOMAIN  # The training corpus's held-out test split, LAReQA-style.
STUDY_MIXTURE = "study_evaluation"  # In-domain, then the out-of-domain sets, then MIRACL.
RESULTS_FILE = run_dir.STUDY_RESULTS
VALIDATION_SEED = 1  # The fit/validation split of the train articles (test/train uses seed 0).
# Full-pool measures: every default one, and R@1 beside R@10 (trec_eval's recall_1, recall_10).
MEASURES = (*metrics.DEFAULT_MEASURES, "recall_1")


def article_splits(corpus_dir: str, languages: Sequence[str] | None,
                   validation_fraction: float) -> dict[str, list[str]]:
  """Article titles of the seqio splits `train` (fit) and `validation`, the two parts of the
  corpus's train articles."""
  corpus = corpora.load_parallel_corpus(corpus_dir, languages=languages)
  fit, validation = corpus.select_articles("train").split_by_article(validation_fraction,
                                                                     seed=VALIDATION_SEED)
  return {"train": sorted(fit.article_ids()), "validation": sorted(validation.article_ids())}


def validation_record_name(corpus_name: str) -> str:
  """The corpus the validation loss is measured on: `{corpus_name}_validation` (its record
  `{corpus_name}_validation_hybrid`, served as its one split, `train`)."""
  return f"{corpus_name}_validation"


def _same_folder(a, b) -> bool:
  return fs.abspath(str(a)).rstrip("/") == fs.abspath(str(b)).rstrip("/")


def register_study_data(*, corpus_name: str, corpus_dir: str, family: str, spm_path: str,
                        languages: Sequence[str] | None, data_dir: str,
                        validation_fraction: float = 0.1,
                        validation_languages: Sequence[str] | None = ("en",),
                        validation_file: str | None = None,
                        out_of_domain_languages: Sequence[str] | None = None,
                        in_domain_max_items: int | None = None,
                        miracl: Sequence[dict] = (),
                        text_format: text_lib.TextFormat = text_lib.TextFormat()) -> None:
  """Registers the study's data: the training corpus `{corpus_name}_hybrid`, its validation
  corpus, and the evaluation mixture STUDY_MIXTURE (in-domain, then out-of-domain sets).

  The corpus's articles are parted into `test` (the held-out articles: the in-domain set,
  IN_DOMAIN, at every scale), `train` (fit) and, without `validation_file`, `validation`
  (`validation_fraction` of the train articles). The validation loss is measured on
  `{corpus_name}_validation_hybrid`: the `validation_languages` part (the paper's: English only)
  of the validation articles, or of `validation_file` (a SQuAD-format file, e.g. SQuADShifts, read
  in the one validation language unless named after its language; every train article is then
  fit). Only data is registered: the batches of training and validation are their inputs'
  `hybrid.HybridSchedule`s (base.gin: the validation's alpha is VALIDATION_ALPHA).
  Out of domain, zero-shot and whole: data_dir's XQuAD-R and MLQA-R in `out_of_domain_languages`
  (None: all of each set's), less the one that is the training corpus (the CPU demo trains on
  XQuAD-R: its XQuAD-R is in-domain by construction), then MIRACL's languages given.
  in_domain_max_items: evaluate a seeded sample of that many held-out QA items (None: all).
  miracl: dicts of register_miracl's language, topics_tsv, qrels_trec and corpus_jsonl.
  """
  splits = ({"train": "train"} if validation_file
            else article_splits(corpus_dir, languages, validation_fraction))
  splits["test"] = "test"
  record = tasks.register_parallel_qa(corpus_name, corpus_dir, family, spm_path, languages,
                                      splits=splits, text_format=text_format)
  tasks.register_parallel_qa(validation_record_name(corpus_name),
                             validation_file or corpus_dir, family, spm_path,
                             validation_languages or languages,
                             splits={"train": None if validation_file else splits["validation"]},
                             text_format=text_format)
  tasks.register_lareqa_split(IN_DOMAIN, record.name, "test", max_items=in_domain_max_items)
  logging.debug("in-domain test set: the test split of %s (%s)", record.name, corpus_dir)
  out_of_domain = []
  for dataset in retrieval_data.LAREQA_FOLDERS:
    if _same_folder(retrieval_data.lareqa_folder(data_dir, dataset), corpus_dir):
      tasks.unregister_evaluation_dataset(dataset)  # The training corpus: in-domain.
      continue
    tasks.register_lareqa(dataset, data_dir, family, spm_path, out_of_domain_languages)
    out_of_domain.append(dataset)
  tasks.unregister_miracl()  # `miracl` is this study's languages only.
  for entry in miracl:
    tasks.register_miracl(family=family, spm_path=spm_path, **entry)
  tasks.register_evaluation_mixture(STUDY_MIXTURE, [IN_DOMAIN, *out_of_domain, *(
      f"miracl_{entry['language']}" for entry in miracl)])


def study_datasets() -> list:
  """(name, RetrievalDataset) of the study's evaluation: in-domain first (STUDY_MIXTURE)."""
  return tasks.evaluation_mixture_datasets(STUDY_MIXTURE)


def check_held_out(train_mixture: str, in_domain: retrieval_data.RetrievalDataset,
                   validation_mixture: str | None = None) -> None:
  """Fails if an in-domain question's QA item is a pair the run trains or validates on (the
  corpus's splits but `test`, and the validation corpus's pairs)."""
  corpus = tasks.get_hybrid_mixture(train_mixture)
  seen = {pair_id for split in corpus.splits if split != "test"
          for pair_id in corpus.corpora[split].pair_ids()}
  if validation_mixture:
    seen |= set(tasks.get_hybrid_mixture(validation_mixture).corpus.pair_ids())
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


def restrict_languages(inputs: dict, languages: Sequence[str]) -> dict:
  """An encoded dataset's (eval_run.encode_dataset) questions and candidates in `languages` only."""
  return {key: {language: values for language, values in by_language.items()
                if language in languages} for key, by_language in inputs.items()}


def distractor_matched(pair: tuple, draws: int, seed: int) -> dict | None:
  """{side: scores} of an (in-domain, out-of-domain) pair of encoded sets on distractor-matched
  pools (study_eval.score_distractor_matched), or None where the candidates are not LAReQA
  sentences whose paragraph their ids name (e.g. a translated corpus's passages)."""
  try:
    return study_eval.score_distractor_matched(dict(zip(study_stats.SIDES, pair)), draws, seed)
  except ValueError as e:
    logging.info("no distractor-matched pools: %s", e)
    return None


def evaluate_encoder(encoder: encoder_lib.Encoder, datasets, matched_draws: int, seed: int,
                     max_questions_per_language: int | None,
                     max_candidates_per_language: int | None = None) -> dict:
  """Full-pool results with chance for every dataset (its languages, mAP, R@1, R@10, ...); for each
  out-of-domain LAReQA set, a comparison with the in-domain set on size-matched pools of the
  languages both have, and on distractor-matched pools where both are LAReQA sentences with
  their paragraphs; the in-domain and MIRACL sets' per-query nDCG@10 above chance (monolingual,
  full pools), which the report compares on the languages MIRACL shares.

  datasets: (name, RetrievalDataset), IN_DOMAIN among them (study_datasets()).
  max_questions_per_language, max_candidates_per_language: evaluate the first questions and a
  sample of the candidates of each language (limit_questions, limit_candidates) to fit a budget;
  "full" pools are then these sampled pools.
  """
  inputs = {name: eval_run.encode_dataset(encoder, limit_candidates(
      limit_questions(dataset, max_questions_per_language), max_candidates_per_language))
            for name, dataset in datasets}
  units = {name: dataset.candidate_unit for name, dataset in datasets}
  evaluation = {name: {"languages": sorted(inputs[name]["questions"]),
                       "questions": len({qid for items in inputs[name]["questions"].values()
                                         for qid, _ in items}),
                       "candidate_unit": units[name],
                       "full": evaluate.evaluate_settings(**inputs[name], measures=MEASURES),
                       "full_chance": study_eval.full_pool_chance(inputs[name])}
                for name in inputs}
  for name in inputs:
    if name == IN_DOMAIN or name.startswith("miracl_"):
      evaluation[name]["ndcg_above_chance"] = study_eval.monolingual_ndcg_above_chance(inputs[name])
  shared = {name: sorted(set(inputs[IN_DOMAIN]["questions"]) & set(inputs[name]["questions"]))
            for name in inputs if name in retrieval_data.LAREQA_FOLDERS}
  pairs = {name: (restrict_languages(inputs[IN_DOMAIN], languages),
                  restrict_languages(inputs[name], languages))
           for name, languages in shared.items() if languages}
  pool_size = study_eval.matched_pool_size(
      {f"{name}/{side}": pair[k] for name, pair in pairs.items()
       for k, side in enumerate(study_stats.SIDES)}) if pairs else None
  comparisons = {name: {"languages": shared[name], **{
      side: study_eval.score_dataset(pair[k], pool_size, matched_draws, seed)
      for k, side in enumerate(study_stats.SIDES)},
      "distractor_matched": distractor_matched(pair, matched_draws, seed)}
      for name, pair in pairs.items()}
  return {"datasets": evaluation, "comparisons": comparisons, "matched_pool_size": pool_size,
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
                       spm_path: str, train_mixture: str, schedule: hybrid.HybridSchedule,
                       task_feature_lengths: dict, seed: int, settings: dict,
                       validation_mixture: str | None = None, matched_draws: int = 5,
                       max_questions_per_language: int | None = None,
                       max_candidates_per_language: int | None = None,
                       best_metric: str = "eval/loss", best_mode: str = "min",
                       export_dir: str | None = None, num_partitions: int = 1,
                       pretrained: importers.Pretrained | None = None, zero_shot: bool = False,
                       text_format: text_lib.TextFormat = text_lib.TextFormat(),
                       loss_config: train_step.LossConfig = train_step.LossConfig(),
                       objective_steps: int = 0):
  """Trains (`train`: trainer.train with the run's settings bound), exports the checkpoint with
  the best `best_metric` (the lowest validation loss), evaluates it and writes
  MODEL_DIR/study_results.json; returns what it wrote (a study_results.RunResults; stopped by
  SIGTERM, the TrainResult, without evaluating).

  schedule: the run's training batches (the HybridSchedule its training input is given).
  settings: the run's settings to record beside the results (the study's macros), checked as
  study_results.Settings before training.
  validation_mixture: the validation corpus's record, checked with the training one to hold no
  in-domain test question. The evaluation is register_study_data's (study_datasets()).
  num_partitions: the training mesh's (NUM_PARTITIONS); evaluation splits each parameter over as
  many of this host's devices (at most all of them), so a model trained split is evaluated split.
  export_dir: where the exported encoder is kept (local or gs://; the MIRACL stage reads it).
  pretrained, zero_shot: the run's INIT_CHECKPOINT; with zero_shot, that model is evaluated as it
  is, untrained (the study's zero-shot row), with `text_format` and the task lengths.
  objective_steps > 0: the pretrained and the chosen model's in-batch loss on that many held-out
  batches of the run's own kind (the record's `test` split, drawn by `schedule` with seed 0): did
  fine-tuning improve the objective it trained on?
  """
  study_results.settings_from(settings, "study_run.train_and_evaluate.settings")
  datasets = study_datasets()
  check_held_out(train_mixture, dict(datasets)[IN_DOMAIN], validation_mixture)
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
    elif run_dir.is_run(model_dir):  # load_encoder(MODEL_DIR) then takes the chosen step.
      run_dir.record_chosen_step(model_dir, step, best_metric)
  with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, "export")
    if zero_shot:
      artifacts.export_encoder(path, model, pretrained_params(pretrained, model), spm_path,
                               max_length=task_feature_lengths["passage"],
                               query_max_length=task_feature_lengths["query"],
                               text_format=text_format,
                               extra_metadata={"zero_shot": pretrained.path})
    else:
      exporter.export_from_training_checkpoint(
          model_dir, path, model, spm_path, step=step,
          max_length=max(task_feature_lengths.values()), overwrite=True)
    if export_dir and jax.process_index() == 0:  # One writer, though every process exported.
      artifacts.copy_artifact(path, export_dir)
    encoder = exporter.load_encoder(path, batch_size=128, num_partitions=evaluation_partitions(
        num_partitions, jax.local_device_count()))
    evaluation = evaluate_encoder(encoder, datasets, matched_draws, seed,
                                  max_questions_per_language, max_candidates_per_language)
  record = tasks.get_hybrid_mixture(train_mixture)
  evaluation["in_domain_corpus"] = record.corpus_path  # Its held-out test split is in-domain.
  train_record = {"chosen_step": step if not zero_shot else 0, "best_metric": best_metric,
                  "zero_shot": zero_shot,
                  "history": [{k: h[k] for k in ("step", "loss", "accuracy") if k in h}
                              for h in (result.history if result else [])],
                  "validation": [{k: e[k] for k in ("step", "eval/loss", "eval/accuracy")
                                  if k in e} for e in (result.eval_history if result else [])]}
  if objective_steps and not zero_shot and pretrained is not None and "test" in record.splits:
    held_out = input_pipeline.HybridInput(train_mixture, task_feature_lengths,
                                          dataclasses.replace(schedule, seed=0), split="test")
    train_record["objective"] = dict(objective_losses(
        model, loss_config, {"pretrained": pretrained_params(pretrained, model),
                             "fine_tuned": checkpoints.restore_params(model_dir, step)[1]},
        held_out, objective_steps), steps=objective_steps, split="test")
  path = os.path.join(model_dir, RESULTS_FILE)
  out = study_results.from_json(
      {"settings": settings, "evaluation": evaluation, "train": train_record}, path)
  if jax.process_index() == 0:
    study_results.write(path, out)
  return out
