"""Zero-shot retrieval evaluation of an encoder on a named SeqIO evaluation mixture.

Every question and candidate is encoded once; the embeddings serve all three settings
(monolingual, cross-lingual, multilingual). Results go to JSON, markdown and plots, one report
per dataset plus a summary; with an in-domain dataset named, also the degradation of each
out-of-domain dataset against it.
"""
import os
from typing import Sequence

from absl import logging
import jax
import numpy as np

import tasks
from hybridir.data import retrieval_data
from hybridir.evaluation import evaluate
from hybridir.evaluation import metrics
from hybridir.evaluation import reports
from hybridir.evaluation import retrieval
from hybridir.evaluation import trec
from hybridir.export import encoder as encoder_lib
from hybridir.export import exporter
from hybridir import fs

SUMMARY_MEASURES = ("map", "recall_10", "ndcg_cut_10", "recip_rank_cut_10")


def encode_dataset(encoder: encoder_lib.Encoder, dataset: retrieval_data.RetrievalDataset) -> dict:
  """evaluate.evaluate_settings's inputs for a dataset: ids and embeddings per language.

  Candidates are encoded with their context (LAReQA: the paragraph; MIRACL: none, its title
  leads its text) as the encoder's text format says: the same tokens as a training passage.
  """
  questions, question_emb, candidates, candidate_emb = {}, {}, {}, {}
  for language, items in dataset.questions.items():
    questions[language] = [(q.question_id, q.relevant) for q in items]
    question_emb[language] = encoder.encode([q.text for q in items], tower="query")
  for language, items in dataset.candidates.items():
    candidates[language] = [c.candidate_id for c in items]
    candidate_emb[language] = encoder.encode([c.text for c in items], tower="passage",
                                             contexts=[c.context for c in items])
  return dict(questions=questions, question_emb=question_emb, candidates=candidates,
              candidate_emb=candidate_emb)


def write_multilingual_trec(directory: str, inputs: dict, depth: int = 100,
                            tag: str = "hybridir") -> dict[str, str]:
  """TREC run (top `depth` of the pool of every language) and qrels, for external tools.

  Query ids are `{language}-{question id}`: LAReQA shares a question's id across languages.
  """
  pool_ids = [c for language in inputs["candidates"] for c in inputs["candidates"][language]]
  pool_emb = np.concatenate([inputs["candidate_emb"][lang] for lang in inputs["candidates"]])
  in_pool = set(pool_ids)
  qids, question_emb, qrels = [], [], {}
  for language, items in inputs["questions"].items():
    for (qid, relevant), embedding in zip(items, inputs["question_emb"][language]):
      key = f"{language}-{qid}"
      qids.append(key)
      question_emb.append(embedding)
      judged = {c: 1 for c in relevant if c in in_pool}
      if judged:
        qrels[key] = judged
  scores, indices = retrieval.top_k(np.stack(question_emb), pool_emb, min(depth, len(pool_ids)))
  paths = {"run": os.path.join(directory, "multilingual.run"),
           "qrels": os.path.join(directory, "multilingual.qrels")}
  trec.write_run(paths["run"], retrieval.ranking_to_run(qids, pool_ids, scores, indices),
                 tag)
  trec.write_qrels(paths["qrels"], qrels)
  return paths


def summary(results: dict, measures: Sequence[str] = SUMMARY_MEASURES) -> dict[str, float]:
  """Flat `{setting/measure: value}` of the averages, plus multilingual rank distance."""
  out = {}
  for setting in ("monolingual", "cross_lingual", "multilingual"):
    average = results.get(setting, {}).get("average", {})
    for measure in list(measures) + (["rank_distance"] if setting == "multilingual" else []):
      if measure in average:
        out[f"{setting}/{measure}"] = float(average[measure])
  return out


def run_evaluation(*, encoder_path: str, mixture_name: str, output_dir: str,
                   in_domain: str | None = None,
                   measures: Sequence[str] = metrics.DEFAULT_MEASURES,
                   batch_size: int = 64, num_partitions: int = 1) -> dict:
  """Evaluates an encoder (HF directory, T5X checkpoint or exported artifact) on a mixture.

  `in_domain` names the mixture's dataset that is in-domain (e.g. the held-out split of the
  training corpus); every other dataset's degradation against it is reported. num_partitions:
  local devices each parameter is split over (load_encoder's).
  """
  fs.check_writable(output_dir, "output_dir")  # Before any encoding.
  datasets = tasks.evaluation_mixture_datasets(mixture_name)
  names = [name for name, _ in datasets]
  if in_domain is not None and in_domain not in names:
    raise ValueError(f"in_domain={in_domain!r} is not a dataset of {mixture_name!r}: {names}")
  encoder = exporter.load_encoder(encoder_path, batch_size=batch_size,
                                num_partitions=num_partitions)
  writes = jax.process_index() == 0  # Every host computes the same numbers; one writes them.
  results = {}
  for name, dataset in datasets:
    logging.info("evaluating %s on %s (%s)", encoder_path, name, dataset.stats())
    inputs = encode_dataset(encoder, dataset)
    results[name] = evaluate.evaluate_settings(measures=measures, **inputs)
    if writes:
      reports.write_report(os.path.join(output_dir, name), results[name], name=name)
      write_multilingual_trec(os.path.join(output_dir, name), inputs)
  overview = {name: summary(result, measures) for name, result in results.items()}
  if in_domain is not None:
    overview["degradation"] = {name: degradation(overview[in_domain], overview[name])
                               for name in names if name != in_domain}
  if writes:
    reports.write_json(os.path.join(output_dir, "summary.json"), overview)
  logging.info("summary: %s", {k: v for k, v in overview.items() if k != "degradation"})
  return overview


def degradation(in_domain: dict[str, float], out_of_domain: dict[str, float]) -> dict:
  """evaluate.degradation over the measures both summaries have (settings can differ)."""
  common = sorted(set(in_domain) & set(out_of_domain))
  return evaluate.degradation({k: in_domain[k] for k in common},
                              {k: out_of_domain[k] for k in common})
