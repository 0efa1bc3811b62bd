"""SeqIO registrations: parallel QA tasks and mixtures, the hybrid mixture, evaluation mixtures."""
import json
import subprocess
import sys

import pytest
import seqio

import tasks
from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import retrieval_data
from hybridir.data import vocab
from hybridir.data import vocab_families
from hybridir.models import families
from tests.conftest import REPO_ROOT

LANGUAGES = ("de", "en", "zh")
LENGTHS = {"query": 16, "passage": 24}


@pytest.fixture(scope="session")
def spm_models(data_dir, tmp_path_factory):
  """{'t5': path, 'xlmr': path}: small SentencePiece models of XQuAD-R de/en/zh questions."""
  corpus = corpora.load_parallel_corpus(data_dir / "xquad-r", languages=LANGUAGES)
  texts = [pair.question for language in LANGUAGES for pair in corpus.pairs[language].values()]
  folder = tmp_path_factory.mktemp("spm")
  return {family: families.train_vocabulary(family, texts, str(folder / family), 800,
                                            character_coverage=0.98)
          for family in ("t5", "xlmr")}


@pytest.fixture(scope="module")
def xquad(data_dir):
  return corpora.load_parallel_corpus(data_dir / "xquad-r", languages=LANGUAGES)


def register(data_dir, spm_models, name="xq", family="t5", **kwargs):
  kwargs.setdefault("languages", LANGUAGES)
  return tasks.register_parallel_qa(name, data_dir / "xquad-r", family, spm_models[family],
                                    **kwargs)


def first_examples(task_name, count=3):
  task = seqio.get_mixture_or_task(task_name)
  dataset = task.get_dataset(LENGTHS, split=task.splits[0], shuffle=False)
  return list(dataset.take(count).as_numpy_iterator())


def test_registration_creates_a_mono_task_per_language_and_a_cross_task_per_ordered_pair(
    data_dir, spm_models):
  register(data_dir, spm_models)
  names = {n for n in seqio.TaskRegistry.names() if n.startswith("xq_")}
  assert names == {"xq_mono_de", "xq_mono_en", "xq_mono_zh", "xq_cross_de_en", "xq_cross_de_zh",
                   "xq_cross_en_de", "xq_cross_en_zh", "xq_cross_zh_de", "xq_cross_zh_en"}
  mixtures = {n for n in seqio.MixtureRegistry.names() if n.startswith("xq_")}
  assert mixtures == {"xq_mono_mix", "xq_cross_mix", "xq_all_mix", "xq_hybrid"}
  assert "xq_hybrid" in tasks.hybrid_mixture_names()


def test_the_corpus_record_is_its_seqio_hybrid_mixture_and_its_tasks_point_to_it(
    data_dir, spm_models):
  mixture = register(data_dir, spm_models, name="xqrec")
  assert seqio.get_mixture_or_task("xqrec_hybrid") is mixture
  assert isinstance(mixture, seqio.Mixture) and len(mixture.tasks) == 9
  task = seqio.get_mixture_or_task("xqrec_cross_zh_de")
  assert isinstance(task, tasks.ParallelQATask) and task.hybrid is mixture
  assert (task.query_language, task.passage_language) == ("zh", "de")
  assert all(t.hybrid is mixture for t in seqio.get_mixture_or_task("xqrec_all_mix").tasks)
  # As a seqio Mixture it serves its tasks' examples (the batch schedule is its sampler's).
  examples = list(mixture.get_dataset(LENGTHS, split=tasks.qa.TRAIN, shuffle=False)
                  .take(4).as_numpy_iterator())
  assert len(examples) == 4
  assert all(set(e) == {"query", "passage"} and e["passage"][-1] == 1 for e in examples)
  tasks.unregister_parallel_qa("xqrec")
  assert not [n for n in list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
              if n.startswith("xqrec_")]
  with pytest.raises(ValueError, match="no hybrid mixture 'xqrec_hybrid'"):
    tasks.get_hybrid_mixture("xqrec_hybrid")


def test_every_family_and_only_families_have_vocabulary_kinds_it_can_read():
  assert sorted(vocab_families.FAMILY_KINDS) == sorted(families.names())
  assert all(kinds and set(kinds) <= set(vocab.KINDS)
             for kinds in vocab_families.FAMILY_KINDS.values())


@pytest.mark.slow
def test_a_corpus_registers_in_a_process_that_imported_no_model(data_dir, spm_models):
  """The vocabulary kinds are a table read on demand, not filled by importing hybridir.models."""
  script = ("import sys, tasks\n"
            f"tasks.register_parallel_qa('fresh', {str(data_dir / 'xquad-r')!r}, 't5', "
            f"{str(spm_models['t5'])!r}, languages=('de', 'en'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('hybridir.models')))\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == "[]"


def test_mono_example_has_one_language_and_t5_ids_end_in_eos(data_dir, spm_models, xquad):
  register(data_dir, spm_models)
  vocabulary = tasks.get_vocabulary("t5", spm_models["t5"])
  for example in first_examples("xq_mono_de"):
    assert example["query_language"] == example["passage_language"] == b"de"
    pair = xquad.pairs["de"][tasks.get_hybrid_mixture("xq_hybrid").pair_ids[example["pair_id"]]]
    assert example["query"].tolist() == vocab.tokenize(vocabulary, f"Query: {pair.question}", 16)
    assert example["query"][-1] == vocabulary.eos_id == 1


def test_long_passage_is_truncated_to_its_length_keeping_eos(data_dir, spm_models):
  register(data_dir, spm_models)
  passage = first_examples("xq_mono_en", count=1)[0]["passage"]
  assert len(passage) == LENGTHS["passage"] and passage[-1] == 1 and 0 not in passage


def test_cross_example_pairs_a_question_with_the_translated_passage(data_dir, spm_models, xquad):
  register(data_dir, spm_models)
  pair_ids = tasks.get_hybrid_mixture("xq_hybrid").pair_ids
  for example in first_examples("xq_cross_en_zh"):
    assert (example["query_language"], example["passage_language"]) == (b"en", b"zh")
    pair_id = pair_ids[example["pair_id"]]
    passage = xquad.pairs["zh"][pair_id]
    assert example["query_pretokenized"].decode() == f"Query: {xquad.pairs['en'][pair_id].question}"
    assert example["passage_pretokenized"].decode() == (
        f"Passage: {passage.answer_sentence} {passage.passage}")


def test_pair_id_is_the_same_index_in_every_language(data_dir, spm_models):
  register(data_dir, spm_models)
  by_language = [[(e["pair_id"], e["query_pretokenized"]) for e in first_examples(f"xq_mono_{x}")]
                 for x in LANGUAGES]
  assert [[i for i, _ in examples] for examples in by_language] == [[0, 1, 2]] * 3
  assert len({text for examples in by_language for _, text in examples}) == 9


def test_xlmr_ids_start_with_bos_0_and_end_with_eos_2(data_dir, spm_models):
  register(data_dir, spm_models, name="xqx", family="xlmr")
  for example in first_examples("xqx_cross_de_en"):
    for feature in ("query", "passage"):
      assert example[feature][0] == 0 and example[feature][-1] == 2
      assert not {0, 1, 2} & set(example[feature][1:-1].tolist())


def test_reregistration_replaces_the_earlier_tasks(data_dir, spm_models):
  register(data_dir, spm_models, name="xqr")
  register(data_dir, spm_models, name="xqr")
  register(data_dir, spm_models, name="xqr", languages=("de", "en"))
  names = {n for n in seqio.TaskRegistry.names() if n.startswith("xqr_")}
  assert names == {"xqr_mono_de", "xqr_mono_en", "xqr_cross_de_en", "xqr_cross_en_de"}
  assert tasks.get_hybrid_mixture("xqr_hybrid").languages == ("de", "en")


def test_example_mixtures_are_rated_by_task_size(data_dir, spm_models):
  register(data_dir, spm_models)
  mixture = seqio.get_mixture_or_task("xq_all_mix")
  assert len(mixture.tasks) == 9
  assert {mixture.get_rate(task) for task in mixture.tasks} == {1190}


def test_the_record_holds_data_only_and_draws_by_the_schedule_it_is_given(data_dir, spm_models):
  with pytest.raises(TypeError, match="alpha"):  # No batch settings in a registration.
    register(data_dir, spm_models, name="xqg", alpha=0.3)
  mixture = register(data_dir, spm_models, name="xqg")
  default = hybrid.HybridSchedule(8)  # The paper's batches.
  assert (default.alpha, default.cross_pairs) == (0.5, "per_example")
  for schedule in (default, hybrid.HybridSchedule(8, alpha=0.3, cross_pairs="per_batch")):
    assert mixture.sampler(schedule).schedule is schedule


def test_one_record_serves_disjoint_seqio_splits(data_dir, spm_models):
  mixture = register(data_dir, spm_models, name="xqsp", splits={"train": "train", "test": "test"})
  train, test = mixture.corpora["train"], mixture.corpora["test"]
  assert mixture.splits == ("train", "test")
  assert train.article_ids().isdisjoint(test.article_ids())
  assert len(train.pair_ids()) + len(test.pair_ids()) == len(mixture.pair_ids) == 1190
  task = seqio.get_mixture_or_task("xqsp_cross_de_en")
  assert task.splits == ("train", "test")
  for split, part in (("train", train), ("test", test)):
    ids = [mixture.pair_ids[e["pair_id"]] for e in task.get_dataset(
        LENGTHS, split=split, shuffle=False).as_numpy_iterator()]
    assert ids == task.pair_ids[split] and set(ids) == set(part.pair_ids())
  # Batches of a split come from its articles, drawn by the schedule given (X-Y, mono).
  cross, mono = hybrid.HybridSchedule(8, alpha=0.0), hybrid.HybridSchedule(8, alpha=1.0)
  assert {mixture.sampler(cross, split="train").batch(s).kind for s in range(5)} == {"cross"}
  test_batches = [mixture.sampler(mono, split="test").batch(s) for s in range(5)]
  assert {b.kind for b in test_batches} == {"mono"}
  assert set().union(*(b.pair_ids for b in test_batches)) <= set(test.pair_ids())
  with pytest.raises(ValueError, match="no split 'validation'; splits: \\['train', 'test'\\]"):
    mixture.sampler(mono, split="validation")


def test_splits_that_share_an_article_or_lack_train_fail_at_registration(data_dir, spm_models):
  with pytest.raises(ValueError, match="article .* is in splits 'train' and 'test'"):
    register(data_dir, spm_models, name="xqov", splits={"train": None, "test": "test"})
  with pytest.raises(ValueError, match="splits must start with 'train'"):
    register(data_dir, spm_models, name="xqov", splits={"test": "test"})


def test_lareqa_of_a_corpus_split_is_lareqa_read_on_that_splits_articles(data_dir, spm_models):
  record = register(data_dir, spm_models, name="xqle", languages=("de", "en"),
                    splits={"train": "train", "test": "test"})
  tasks.register_lareqa_split("in_domain", "xqle_hybrid", "test")
  from_record = dict(tasks.evaluation_mixture_datasets("lareqa_in_domain"))["in_domain"]
  direct = retrieval_data.load_lareqa(data_dir, "xquad_r", ("de", "en"),
                                      tasks.evaluation._split_titles(data_dir, "xquad_r", "test"))
  assert from_record.questions == direct.questions
  assert from_record.candidates == direct.candidates
  assert ({q.question_id for q in from_record.questions["de"]}
          == set(record.corpora["test"].pairs["de"]))
  assert sum(len(c) for c in from_record.candidates.values()) > 0
  with pytest.raises(ValueError, match="no split 'validation'"):
    tasks.register_lareqa_split("in_domain", "xqle_hybrid", "validation")
  tasks.unregister_evaluation_dataset("in_domain")
  tasks.unregister_parallel_qa("xqle")


def translated_corpus(data_dir, folder, languages=("de", "en")):
  """XQuAD-R's de and en as a translated corpus: JSONL records with passage and answer sentence
  (what hybridir.translation.translate writes), under a folder that is not LAReQA's."""
  folder.mkdir(exist_ok=True)
  for language in languages:
    pairs = corpora.read_squad(data_dir / "xquad-r" / f"{language}.json", language)
    (folder / f"{language}.jsonl").write_text("".join(json.dumps(
        {"id": p.pair_id, "lang": language, "question": p.question, "passage": p.passage,
         "article_id": p.article_id, "answer_sentence": p.answer_sentence}) + "\n"
        for p in pairs))
  return folder


def test_lareqa_of_a_translated_corpus_split_has_sentence_candidates_relevant_in_every_language(
    data_dir, spm_models, tmp_path):
  folder = translated_corpus(data_dir, tmp_path / "translated")
  record = tasks.register_parallel_qa("tr", folder, "t5", spm_models["t5"], ("de", "en"),
                                      splits={"train": "train", "test": "test"})
  tasks.register_lareqa_split("in_domain", "tr_hybrid", "test")
  (_, dataset), = tasks.evaluation_mixture_datasets("lareqa_in_domain")
  test = record.corpora["test"]
  assert dataset.candidate_unit == "sentence"
  assert {q.question_id for q in dataset.questions["en"]} == set(test.pairs["en"])
  candidates = {c.candidate_id: c for items in dataset.candidates.values() for c in items}
  for language in ("de", "en"):
    for question in dataset.questions[language]:
      relevant = [candidates[c] for c in question.relevant]
      assert [c.language for c in relevant] == ["de", "en"]  # One per language holding the pair.
      for candidate in relevant:  # The pair's answer sentence, read in its passage.
        pair = test.pairs[candidate.language][question.question_id]
        assert candidate.text == pair.answer_sentence.strip()
        assert candidate.context == pair.passage
  # Every sentence of every distinct passage is a candidate: about LAReQA's count on these articles.
  lareqa = retrieval_data.load_lareqa(data_dir, "xquad_r", ("de", "en"), sorted(test.article_ids()))
  for language in ("de", "en"):
    assert abs(len(dataset.candidates[language]) - len(lareqa.candidates[language])) <= 0.1 * len(
        lareqa.candidates[language])
  tasks.register_lareqa_split("in_domain", "tr_hybrid", "test", max_items=20)
  (_, sampled), = tasks.evaluation_mixture_datasets("lareqa_in_domain")
  kept = {q.question_id for items in sampled.questions.values() for q in items}
  assert len(kept) == 20 and kept <= set(test.pair_ids())
  passages = {test.pairs["en"][i].passage for i in kept if i in test.pairs["en"]}
  assert {c.context for c in sampled.candidates["en"]} == passages  # Their passages' sentences.
  tasks.unregister_evaluation_dataset("in_domain")
  tasks.unregister_parallel_qa("tr")


def test_a_corpus_without_answer_sentences_gives_passage_candidates(tmp_path):
  records = [{"id": f"q{i}", "lang": language, "question": f"Q{i} {language}?",
              "passage": f"Passage {i % 2} in {language}. Second sentence.", "article_id": f"a{i}"}
             for i in range(4) for language in ("de", "en")]
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  dataset = retrieval_data.from_parallel_corpus(corpora.load_parallel_corpus(path), "in_domain")
  assert dataset.candidate_unit == "passage"
  assert [c.text for c in dataset.candidates["en"]] == ["Passage 0 in en. Second sentence.",
                                                        "Passage 1 in en. Second sentence."]
  by_id = {c.candidate_id: c.text for items in dataset.candidates.values() for c in items}
  question = dataset.questions["de"][1]
  assert [by_id[c] for c in question.relevant] == ["Passage 1 in de. Second sentence.",
                                                   "Passage 1 in en. Second sentence."]


def test_lareqa_mixtures_give_the_published_counts(data_dir, spm_models):
  tasks.register_lareqa("xquad_r", data_dir, "t5", spm_models["t5"], languages=("de", "en"))
  tasks.register_lareqa("mlqa_r", data_dir, "t5", spm_models["t5"], languages=("de", "en"))
  for name in ("lareqa_xquad_r", "lareqa_mlqa_r", "lareqa"):
    assert name in seqio.MixtureRegistry.names()
  datasets = dict(tasks.evaluation_mixture_datasets("lareqa"))
  assert {d: s.stats()["de"]["questions"] for d, s in datasets.items()} == {
      "xquad_r": 1190, "mlqa_r": 512}
  assert datasets["xquad_r"].stats()["en"]["candidates"] == 1180
  assert datasets["mlqa_r"].stats()["en"]["candidates"] == 6264
  assert [d for d, _ in tasks.evaluation_mixture_datasets("lareqa_mlqa_r")] == ["mlqa_r"]
  mixture = seqio.get_mixture_or_task("lareqa")
  assert isinstance(mixture, tasks.EvaluationMixture)
  assert {t.dataset.name for t in mixture.tasks} == {"xquad_r", "mlqa_r"}
  assert all(isinstance(t, tasks.RetrievalTask) for t in mixture.tasks)


def test_reregistering_an_evaluation_dataset_replaces_its_tasks(data_dir, spm_models):
  tasks.register_lareqa("xquad_r", data_dir, "t5", spm_models["t5"], languages=("de", "en", "zh"))
  tasks.register_lareqa("xquad_r", data_dir, "t5", spm_models["t5"], languages=("de", "en"))
  assert {n for n in seqio.TaskRegistry.names() if n.startswith("xquad_r_")} == {
      "xquad_r_de_queries", "xquad_r_de_candidates", "xquad_r_en_queries",
      "xquad_r_en_candidates"}
  (_, dataset), = tasks.evaluation_mixture_datasets("lareqa_xquad_r")
  assert set(dataset.questions) == {"de", "en"}
  with pytest.raises(ValueError, match="no evaluation dataset 'tydi'"):
    tasks.dataset_tasks("tydi")


def test_lareqa_tasks_hold_queries_and_candidate_sentences(data_dir, spm_models):
  tasks.register_lareqa("xquad_r", data_dir, "t5", spm_models["t5"], languages=("de", "en"))
  assert set(tasks.dataset_tasks("xquad_r")) == {
      "xquad_r_de_queries", "xquad_r_de_candidates", "xquad_r_en_queries",
      "xquad_r_en_candidates"}
  query = first_examples("xquad_r_en_queries", count=1)[0]
  candidate = first_examples("xquad_r_en_candidates", count=1)[0]
  assert "passage" not in query and query["query"][-1] == 1
  assert "query" not in candidate and candidate["candidate_id"] == b"en:0:0"
  size = seqio.get_mixture_or_task("xquad_r_en_candidates").num_input_examples("test")
  assert size == 1180


def test_miracl_language_joins_the_miracl_mixture(tmp_path, spm_models):
  (tmp_path / "topics.tsv").write_text("q1\tWer war Kant?\n")
  (tmp_path / "qrels.txt").write_text("q1 Q0 d1 1\nq1 Q0 d2 0\n")
  (tmp_path / "corpus.jsonl").write_text(
      '{"docid": "d1", "title": "Kant", "text": "Kant war ein Philosoph."}\n'
      '{"docid": "d2", "title": "Bonn", "text": "Bonn liegt am Rhein."}\n')
  tasks.register_miracl("de", tmp_path / "topics.tsv", tmp_path / "qrels.txt",
                        tmp_path / "corpus.jsonl", "t5", spm_models["t5"])
  datasets = dict(tasks.evaluation_mixture_datasets("miracl"))  # Other tests add languages too.
  assert datasets["miracl_de"].questions["de"][0].relevant == ("d1",)
  assert {"miracl_de_queries", "miracl_de_candidates"} <= set(seqio.TaskRegistry.names())


def test_unregistering_an_evaluation_dataset_takes_it_out_of_its_mixtures(tmp_path, spm_models):
  (tmp_path / "topics.tsv").write_text("q1\tWer war Kant?\n")
  (tmp_path / "qrels.txt").write_text("q1 Q0 d1 1\n")
  (tmp_path / "corpus.jsonl").write_text('{"docid": "d1", "title": "Kant", "text": "Philosoph."}\n')
  for language in ("de", "fr"):
    tasks.register_miracl(language, tmp_path / "topics.tsv", tmp_path / "qrels.txt",
                          tmp_path / "corpus.jsonl", "t5", spm_models["t5"])
  tasks.unregister_evaluation_dataset("miracl_fr")
  assert "miracl_fr" not in tasks.evaluation_dataset_names()
  assert "miracl_fr" not in dict(tasks.evaluation_mixture_datasets("miracl"))
  assert not [n for n in seqio.TaskRegistry.names() if n.startswith("miracl_fr_")]
  tasks.unregister_miracl()
  assert not [d for d in tasks.evaluation_dataset_names() if d.startswith("miracl_")]
  assert "miracl" not in tasks.evaluation_mixture_names()


def test_unknown_evaluation_mixture_names_those_registered():
  with pytest.raises(ValueError, match="no evaluation mixture 'lareqa_tydi'"):
    tasks.evaluation_mixture_datasets("lareqa_tydi")


def test_missing_spm_model_is_named(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tasks.register_parallel_qa("xqm", data_dir / "xquad-r", "t5", tmp_path / "missing.model")
  assert not [n for n in seqio.TaskRegistry.names() if n.startswith("xqm_")]


def test_the_held_out_split_is_one_function_for_training_evaluation_and_the_study(data_dir,
                                                                                 spm_models):
  from hybridir.study import study_run
  from tasks import evaluation
  corpus = corpora.load_parallel_corpus(data_dir / "xquad-r")
  train, test = corpus.select_articles("train"), corpus.select_articles("test")
  assert train.article_ids().isdisjoint(test.article_ids())
  assert train.article_ids() | test.article_ids() == corpus.article_ids()
  assert register(data_dir, spm_models, name="xqs", languages=None,
                  splits={"train": "train"}).corpora["train"].article_ids() == train.article_ids()
  assert set(evaluation._split_titles(data_dir, "xquad_r", "test")) == test.article_ids()
  parts = study_run.article_splits(str(data_dir / "xquad-r"), None, 0.1)
  assert set(parts["train"]) | set(parts["validation"]) == train.article_ids()
  with pytest.raises(ValueError, match="where: split must be None, 'train', 'test'"):
    corpus.select_articles("dev", "where")
  assert corpus.select_articles(sorted(test.article_ids())).pair_ids() == test.pair_ids()
