"""The study's data: in-domain is the training corpus's held-out split at every scale, XQuAD-R and
MLQA-R are out of domain and whole, and the checkpoint is chosen on an English-only validation set
(the held-out validation articles' English part, or a SQuAD file given)."""
import json
import zlib

import numpy as np
import pytest

import tasks
from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir.data import retrieval_data
from hybridir.study import study_run
from tests.test_tasks import spm_models  # noqa: F401  (the fixture)
from tests.test_tasks import translated_corpus

PAPER_LANGUAGES = ["ar", "zh", "en", "de", "hi", "ru", "es", "th", "tr"]


def register(data_dir, spm_path, corpus_dir, languages, **options):
  study_run.register_study_data(corpus_name="study", corpus_dir=str(corpus_dir), family="t5",
                                spm_path=spm_path, languages=languages, data_dir=str(data_dir),
                                **options)
  return tasks.get_hybrid_mixture("study_hybrid"), dict(study_run.study_datasets())


def question_ids(dataset):
  return {q.question_id for items in dataset.questions.values() for q in items}


@pytest.fixture(scope="module")
def full_scale(data_dir, spm_models, tmp_path_factory):  # noqa: F811
  """The full-scale registration (base.gin's defaults) on a translated corpus in the paper's
  nine training languages."""
  corpus_dir = translated_corpus(data_dir, tmp_path_factory.mktemp("data") / "translated",
                                 PAPER_LANGUAGES)
  return register(data_dir, spm_models["t5"], corpus_dir, PAPER_LANGUAGES,
                  in_domain_max_items=1190)


def test_at_full_scale_in_domain_is_the_training_corpus_held_out_split(full_scale):
  record, datasets = full_scale
  assert list(datasets) == ["in_domain", "xquad_r", "mlqa_r"]
  assert record.splits == ("train", "validation", "test")
  in_domain = datasets["in_domain"]
  assert set(in_domain.questions) == set(PAPER_LANGUAGES)
  assert question_ids(in_domain) == set(record.corpora["test"].pair_ids())  # Fewer than 1190.
  assert in_domain.candidate_unit == "sentence"
  assert {c.context for c in in_domain.candidates["th"]} == {
      pair.passage for pair in record.corpora["test"].pairs["th"].values()}
  study_run.check_held_out("study_hybrid", in_domain, "study_validation_hybrid")


def test_at_full_scale_xquad_r_and_mlqa_r_are_out_of_domain_whole(full_scale):
  _, datasets = full_scale
  xquad, mlqa = datasets["xquad_r"], datasets["mlqa_r"]
  assert tuple(sorted(xquad.questions)) == retrieval_data.LAREQA_LANGUAGES["xquad_r"]  # All 11.
  assert {x: s["questions"] for x, s in xquad.stats().items()} == dict.fromkeys(
      retrieval_data.LAREQA_LANGUAGES["xquad_r"], 1190)  # Every question: no 20% split.
  assert tuple(sorted(mlqa.questions)) == retrieval_data.LAREQA_LANGUAGES["mlqa_r"]  # All 7.
  assert mlqa.stats()["de"]["questions"] == 512 and mlqa.stats()["en"]["candidates"] == 6264


class HashEncoder:
  """A stand-in encoder: a unit vector seeded by each text (an untrained model's scores)."""

  def encode(self, texts, tower, contexts=None):
    del tower, contexts
    vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=16)
                        for t in texts]) if texts else np.zeros((0, 16))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-9)


def test_each_degradation_compares_the_languages_both_sets_have(full_scale, tmp_path):
  (tmp_path / "topics.tsv").write_text("m1\tWho?\nm2\tWhere?\n")
  (tmp_path / "qrels.txt").write_text("m1 Q0 d1 1\nm2 Q0 d2 1\n")
  (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(
      {"docid": f"d{i}", "title": "T", "text": f"Passage {i}."}) + "\n" for i in range(30)))
  record = tasks.get_hybrid_mixture("study_hybrid")
  tasks.register_miracl("en", tmp_path / "topics.tsv", tmp_path / "qrels.txt",
                        tmp_path / "corpus.jsonl", "t5", record.spm_path)
  datasets = dict(study_run.study_datasets())
  tasks.register_evaluation_mixture(study_run.STUDY_MIXTURE, [*datasets, "miracl_en"])
  evaluation = study_run.evaluate_encoder(HashEncoder(), study_run.study_datasets(), 2, 0,
                                          max_questions_per_language=30,
                                          max_candidates_per_language=200)
  comparisons = evaluation["comparisons"]
  assert {name: c["languages"] for name, c in comparisons.items()} == {
      "xquad_r": sorted(PAPER_LANGUAGES),  # el and vi: unseen in training, not compared.
      "mlqa_r": ["ar", "de", "en", "es", "hi", "zh"]}
  for comparison in comparisons.values():
    for side in ("in_domain", "out_of_domain"):
      assert set(comparison[side]["per_query_above_chance"]["monolingual"]) == set(
          comparison["languages"])
  full = evaluation["datasets"]
  assert full["xquad_r"]["languages"] == sorted(retrieval_data.LAREQA_LANGUAGES["xquad_r"])
  assert {"map", "recall_1", "recall_10"} <= set(full["mlqa_r"]["full"]["multilingual"]["average"])
  # nDCG@10 above chance, per query, for in-domain and MIRACL: MIRACL's degradation.
  assert set(full["in_domain"]["ndcg_above_chance"]["monolingual"]) == set(PAPER_LANGUAGES)
  assert set(full["miracl_en"]["ndcg_above_chance"]["monolingual"]["en"]) == {"m1", "m2"}
  tasks.unregister_miracl()


def test_validation_is_the_english_part_of_the_held_out_validation_articles(full_scale):
  record, _ = full_scale
  validation = tasks.get_hybrid_mixture("study_validation_hybrid")
  assert validation.languages == ("en",)
  assert set(validation.corpus.pair_ids()) == set(record.corpora["validation"].pairs["en"])
  batches = input_pipeline.HybridInput("study_validation_hybrid", {"query": 16, "passage": 32},
                                       hybrid.HybridSchedule(8, alpha=1.0), split="train")
  specs = [batches.batch_spec(step) for step in range(4)]
  assert {(spec.kind, spec.query_language, spec.passage_language) for spec in specs} == {
      ("mono", "en", "en")}


def test_the_demo_trains_on_xquad_r_so_its_xquad_r_is_in_domain_and_mlqa_r_out_of_domain(
    data_dir, spm_models):  # noqa: F811
  languages = ["de", "en", "es", "vi"]
  record, datasets = register(data_dir, spm_models["t5"], data_dir / "xquad-r", languages,
                              out_of_domain_languages=languages)
  assert list(datasets) == ["in_domain", "mlqa_r"]
  assert "xquad_r" not in tasks.evaluation_dataset_names()
  assert question_ids(datasets["in_domain"]) == set(record.corpora["test"].pair_ids())
  assert sorted(datasets["mlqa_r"].questions) == languages


def test_validation_on_a_squad_file_given_fits_on_every_train_article(
    data_dir, spm_models, tmp_path):  # noqa: F811
  # A SQuADShifts-like file: SQuAD JSON named after no language, read as English.
  squad = json.loads((data_dir / "mlqa-r" / "en.json").read_text())
  squad["data"] = squad["data"][:3]
  shifts = tmp_path / "new_wiki_v1.0.json"
  shifts.write_text(json.dumps(squad))
  record, _ = register(data_dir, spm_models["t5"], data_dir / "xquad-r", ["de", "en"],
                       out_of_domain_languages=["de", "en"], validation_file=str(shifts))
  assert record.splits == ("train", "test")
  assert set(record.corpora["train"].pair_ids()) == set(
      corpora.load_parallel_corpus(data_dir / "xquad-r", languages=["de", "en"])
      .select_articles("train").pair_ids())
  validation = tasks.get_hybrid_mixture("study_validation_hybrid")
  assert validation.languages == ("en",)
  assert set(validation.corpus.pair_ids()) == {
      p.pair_id for p in corpora.read_squad(shifts, "en")}
  # A validation file holding in-domain test questions is refused before anything trains.
  register(data_dir, spm_models["t5"], data_dir / "xquad-r", ["de", "en"],
           out_of_domain_languages=["de", "en"],
           validation_file=str(data_dir / "xquad-r" / "en.json"))
  with pytest.raises(RuntimeError, match="in-domain test questions are also training or "
                     "validation pairs"):
    study_run.check_held_out("study_hybrid", dict(study_run.study_datasets())["in_domain"],
                             "study_validation_hybrid")
