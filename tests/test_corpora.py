"""Specification of corpus reading: LAReQA counts, validation errors, parallel corpora, MIRACL."""
import json
import logging
import pathlib

import pytest

from hybridir.data import corpora
from hybridir.data import retrieval_data

# LAReQA's published table (questions, candidates); see ../shared/data/README.md.
XQUAD_R_CANDIDATES = {"ar": 1222, "de": 1276, "el": 1234, "en": 1180, "es": 1215, "hi": 1244,
                      "ru": 1219, "th": 852, "tr": 1167, "vi": 1209, "zh": 1196}
MLQA_R_TABLE = {"ar": (517, 2545), "de": (512, 2362), "en": (1148, 6264), "es": (500, 1787),
                "hi": (507, 2426), "vi": (511, 2828), "zh": (504, 2322)}
FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def xquad_r(data_dir):
  return retrieval_data.load_lareqa(data_dir, "xquad_r")


@pytest.fixture(scope="module")
def mlqa_r(data_dir):
  return retrieval_data.load_lareqa(data_dir, "mlqa_r")


@pytest.fixture(scope="module")
def mlqa_corpus(data_dir):
  return corpora.load_parallel_corpus(data_dir / "mlqa-r")


@pytest.fixture(scope="module")
def xquad_corpus(data_dir):
  return corpora.load_parallel_corpus(data_dir / "xquad-r")


def squad_record(question="Where is the tower?", context="Paris is big. The tower is in Paris.",
                 answer_start=30, qid="q1"):
  return {"version": "1.1", "data": [{"title": "Paris", "paragraphs": [{
      "context": context,
      "qas": [{"id": qid, "question": question,
               "answers": [{"answer_start": answer_start, "text": "Paris"}]}]}]}]}


def write_json(path, record):
  path.write_text(json.dumps(record), encoding="utf-8")
  return path


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


JSONL_RECORD = {"id": "p1", "lang": "en", "question": "Who?", "passage": "Ada did."}


# LAReQA evaluation sets.


@pytest.mark.parametrize("language", sorted(XQUAD_R_CANDIDATES))
def test_xquad_r_counts_equal_lareqa_table(xquad_r, language):
  stats = xquad_r.stats()[language]
  assert (stats["questions"], stats["candidates"]) == (1190, XQUAD_R_CANDIDATES[language])


@pytest.mark.parametrize("language", sorted(MLQA_R_TABLE))
def test_mlqa_r_counts_equal_lareqa_table(mlqa_r, language):
  stats = mlqa_r.stats()[language]
  assert (stats["questions"], stats["candidates"]) == MLQA_R_TABLE[language]


def test_xquad_r_question_has_one_relevant_sentence_in_each_of_eleven_languages(xquad_r):
  for question in xquad_r.questions["de"]:
    assert sorted(c.split(":")[0] for c in question.relevant) == sorted(XQUAD_R_CANDIDATES)


def test_mlqa_r_relevant_sentences_are_in_the_languages_holding_the_question(data_dir, mlqa_r):
  languages_of = {}
  for language in MLQA_R_TABLE:
    squad = json.loads((data_dir / "mlqa-r" / f"{language}.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          languages_of.setdefault(qa["id"], set()).add(language)
  for question in mlqa_r.questions["en"]:
    assert {c.split(":")[0] for c in question.relevant} == languages_of[question.question_id]


def test_relevant_english_sentence_holds_the_start_of_the_answer(data_dir, xquad_r):
  squad = json.loads((data_dir / "xquad-r" / "en.json").read_text(encoding="utf-8"))
  answers = {qa["id"]: qa["answers"][0]["text"] for a in squad["data"] for p in a["paragraphs"]
             for qa in p["qas"]}
  texts = {c.candidate_id: c.text for c in xquad_r.candidates["en"]}
  for question in xquad_r.questions["en"]:
    [english] = [texts[c] for c in question.relevant if c.startswith("en:")]
    # Three answers run past a sentence break ("E.I. | du Pont"); their first word is inside.
    assert answers[question.question_id].split()[0] in english


def test_lareqa_split_keeps_only_questions_of_held_out_articles(data_dir, mlqa_corpus):
  _, test = mlqa_corpus.split_by_article(0.1, seed=3)
  held_out = retrieval_data.load_lareqa(data_dir, "mlqa_r", split=sorted(test.article_ids()))
  for language in MLQA_R_TABLE:
    assert {q.question_id for q in held_out.questions[language]} == set(test.pairs[language])


# Reading training corpora.


def test_read_squad_sentence_unit_gives_the_sentence_holding_the_answer(tmp_path):
  path = write_json(tmp_path / "en.json", squad_record())
  [pair] = corpora.read_squad(path, "en", passage_unit="sentence")
  assert (pair.passage, pair.answer_sentence) == ("The tower is in Paris.",) * 2


def test_read_squad_paragraph_unit_gives_the_whole_context(tmp_path):
  path = write_json(tmp_path / "en.json", squad_record())
  [pair] = corpora.read_squad(path, "en")
  assert (pair.pair_id, pair.passage, pair.article_id) == (
      "q1", "Paris is big. The tower is in Paris.", "Paris")


def test_split_sentences_breaks_after_latin_and_cjk_sentence_ends():
  text = "Hello there. This is it! 你好。再见"
  assert [text[s:e].strip() for s, e in corpora.split_sentences(text)] == [
      "Hello there.", "This is it!", "你好。", "再见"]


def test_read_jsonl_reads_optional_article_id(tmp_path):
  path = write_jsonl(tmp_path / "pairs.jsonl", [dict(JSONL_RECORD, article_id="doc7")])
  [pair] = corpora.read_jsonl(path)
  assert (pair.pair_id, pair.language, pair.article_id) == ("p1", "en", "doc7")


# Validation errors name the file, the record id or line, and the reason.


def test_truncated_squad_json_error_names_file_and_line(tmp_path):
  path = tmp_path / "en.json"
  path.write_text(json.dumps(squad_record())[:-20], encoding="utf-8")
  with pytest.raises(corpora.CorpusError, match=r"en\.json: malformed or truncated JSON at line 1"):
    corpora.read_squad(path, "en")


def test_truncated_jsonl_record_error_names_file_and_line(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text(json.dumps(JSONL_RECORD) + "\n" + json.dumps(JSONL_RECORD)[:-9],
                  encoding="utf-8")
  with pytest.raises(corpora.CorpusError, match=r"pairs\.jsonl: line 2: malformed or truncated"):
    corpora.read_jsonl(path)


def test_squad_missing_question_error_names_file_and_record_id(tmp_path):
  record = squad_record(qid="56be4db0acb8001400a502ec")
  del record["data"][0]["paragraphs"][0]["qas"][0]["question"]
  path = write_json(tmp_path / "de.json", record)
  with pytest.raises(corpora.CorpusError,
                     match=r"de\.json: record id '56be4db0acb8001400a502ec': missing field "
                           r"'question'"):
    corpora.read_squad(path, "de")


def test_jsonl_missing_passage_error_names_file_and_line(tmp_path):
  record = {k: v for k, v in JSONL_RECORD.items() if k != "passage"}
  path = write_jsonl(tmp_path / "pairs.jsonl", [JSONL_RECORD, record])
  with pytest.raises(corpora.CorpusError,
                     match=r"pairs\.jsonl: line 2 \(record id 'p1'\): missing field 'passage'"):
    corpora.read_jsonl(path)


def test_squad_empty_question_error_names_file_and_record_id(tmp_path):
  path = write_json(tmp_path / "en.json", squad_record(question="  ", qid="q9"))
  with pytest.raises(corpora.CorpusError, match=r"en\.json: record id 'q9': field 'question' is "
                                                r"empty"):
    corpora.read_squad(path, "en")


def test_jsonl_empty_passage_error_names_file_and_line(tmp_path):
  path = write_jsonl(tmp_path / "pairs.jsonl", [dict(JSONL_RECORD, passage="")])
  with pytest.raises(corpora.CorpusError, match=r"pairs\.jsonl: line 1 .*'passage' is empty"):
    corpora.read_jsonl(path)


def test_jsonl_unknown_language_error_names_file_line_and_code(tmp_path):
  path = write_jsonl(tmp_path / "pairs.jsonl", [JSONL_RECORD, dict(JSONL_RECORD, lang="xx")])
  with pytest.raises(corpora.CorpusError,
                     match=r"pairs\.jsonl: line 2 .*unknown language code 'xx'"):
    corpora.read_jsonl(path)


def test_squad_file_named_for_unknown_language_is_rejected(tmp_path):
  write_json(tmp_path / "english.json", squad_record())
  with pytest.raises(corpora.CorpusError, match=r"english\.json.*unknown language code 'english'"):
    corpora.load_parallel_corpus(tmp_path)


def test_squad_answer_outside_every_sentence_is_rejected(tmp_path):
  record = squad_record(answer_start=500)
  path = write_json(tmp_path / "en.json", record)
  with pytest.raises(corpora.CorpusError, match=r"record id 'q1': answer_start 500 is outside"):
    corpora.read_squad(path, "en")


def test_known_languages_cover_mt5_and_xlmr_languages():
  assert {"en", "zh", "ceb", "haw", "hmn", "iw", "he", "fil", "tl", "sw", "yo", "om",
          "qu"} <= corpora.KNOWN_LANGUAGES
  assert len(corpora.KNOWN_LANGUAGES) >= 101


# Parallel corpora.


def test_missing_report_counts_ids_absent_per_language_on_mlqa_r(data_dir, mlqa_corpus):
  ids = {}
  for language in MLQA_R_TABLE:
    squad = json.loads((data_dir / "mlqa-r" / f"{language}.json").read_text(encoding="utf-8"))
    ids[language] = {qa["id"] for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]}
  every_id = set().union(*ids.values())
  expected = {language: len(every_id - ids[language]) for language in MLQA_R_TABLE}
  assert mlqa_corpus.missing_report() == dict(expected, total_ids=len(every_id))


def test_partly_parallel_corpus_logs_a_warning_with_missing_counts(data_dir, caplog):
  with caplog.at_level(logging.WARNING):
    corpora.load_parallel_corpus(data_dir / "mlqa-r", languages=["de", "en"])
  assert "of 1148 pair ids, missing per language: de 636, en 0" in caplog.text


def test_fully_parallel_corpus_reports_no_missing_ids(xquad_corpus):
  assert set(xquad_corpus.missing_report().values()) == {0, 1190}


def test_jsonl_corpus_groups_pairs_by_their_lang_field(tmp_path):
  write_jsonl(tmp_path / "a.jsonl", [JSONL_RECORD, dict(JSONL_RECORD, lang="sw")])
  write_jsonl(tmp_path / "b.jsonl", [dict(JSONL_RECORD, id="p2", lang="sw")])
  corpus = corpora.load_parallel_corpus(tmp_path)
  assert {lang: sorted(corpus.pairs[lang]) for lang in corpus.languages} == {
      "en": ["p1"], "sw": ["p1", "p2"]}


def test_duplicate_id_in_one_language_is_rejected(tmp_path):
  write_jsonl(tmp_path / "a.jsonl", [JSONL_RECORD, JSONL_RECORD])
  with pytest.raises(corpora.CorpusError, match=r"a\.jsonl: record id 'p1': duplicate id"):
    corpora.load_parallel_corpus(tmp_path)


def test_source_is_the_jsonl_field_else_the_subfolder_else_the_corpus_name(tmp_path):
  corpus_dir = tmp_path / "mycorpus"
  (corpus_dir / "duorc").mkdir(parents=True)
  write_jsonl(corpus_dir / "a.jsonl", [JSONL_RECORD, dict(JSONL_RECORD, id="p2", source="nq")])
  write_json(corpus_dir / "duorc" / "en.json", squad_record(qid="q1"))
  write_json(corpus_dir / "duorc" / "de.json", squad_record(qid="q1"))
  corpus = corpora.load_parallel_corpus(corpus_dir)
  assert corpus.sources() == {"duorc": ["q1"], "mycorpus": ["p1"], "nq": ["p2"]}
  assert corpus.pairs["de"]["q1"].source == "duorc"


def test_one_pair_id_with_two_sources_is_rejected(tmp_path):
  write_jsonl(tmp_path / "a.jsonl", [dict(JSONL_RECORD, source="nq"),
                                     dict(JSONL_RECORD, lang="de", source="duorc")])
  with pytest.raises(corpora.CorpusError, match=r"a\.jsonl: record id 'p1': source 'duorc', but "
                                                r"its other languages have source 'nq'"):
    corpora.load_parallel_corpus(tmp_path)


def test_xquad_r_is_one_source_named_after_its_folder(xquad_corpus):
  assert list(xquad_corpus.sources()) == ["xquad-r"]


@pytest.mark.parametrize("folder", ["xquad-r", "mlqa-r"])
def test_split_by_article_puts_no_article_in_both_parts(data_dir, folder):
  corpus = corpora.load_parallel_corpus(data_dir / folder, languages=["en", "de", "zh"])
  train, test = corpus.split_by_article(0.2, seed=0)
  for language in corpus.languages:
    train_articles = {p.article_id for p in train.pairs[language].values()}
    test_articles = {p.article_id for p in test.pairs[language].values()}
    assert train_articles and test_articles and not train_articles & test_articles


def test_split_by_article_keeps_every_pair_exactly_once(xquad_corpus):
  train, test = xquad_corpus.split_by_article(0.25, seed=1)
  assert sorted(train.pair_ids() + test.pair_ids()) == xquad_corpus.pair_ids()


def test_split_by_article_is_the_same_for_the_same_seed(xquad_corpus):
  first = xquad_corpus.split_by_article(0.25, seed=5)[1].pair_ids()
  assert xquad_corpus.split_by_article(0.25, seed=5)[1].pair_ids() == first
  assert xquad_corpus.split_by_article(0.25, seed=6)[1].pair_ids() != first


# MIRACL.


def load_fixture_miracl(language):
  folder = FIXTURES / "miracl" / language
  return retrieval_data.load_miracl(folder / "topics.tsv", folder / "qrels.tsv",
                             folder / "corpus.jsonl", language)


@pytest.mark.parametrize("language, counts", [("en", (4, 12, 5)), ("sw", (3, 8, 4))])
def test_miracl_fixture_counts_questions_documents_and_positive_judgements(language, counts):
  stats = load_fixture_miracl(language).stats()[language]
  assert (stats["questions"], stats["candidates"], stats["relevant_pairs"]) == counts


def test_miracl_candidate_text_is_title_then_text():
  candidates = load_fixture_miracl("sw").candidates["sw"]
  folder = FIXTURES / "miracl" / "sw"
  first = json.loads((folder / "corpus.jsonl").read_text().splitlines()[0])
  candidate = next(c for c in candidates if c.candidate_id == first["docid"])
  assert (candidate.text, candidate.context) == (f"{first['title']} {first['text']}", "")


def test_miracl_only_positive_relevance_counts_as_relevant():
  questions = {q.question_id: q.relevant for q in load_fixture_miracl("sw").questions["sw"]}
  assert questions == {"10": ("201#0",), "11": ("202#0",), "12": ("203#0", "203#1")}


def test_miracl_qrels_with_unknown_docid_error_names_file_and_line(tmp_path):
  folder = FIXTURES / "miracl" / "sw"
  qrels = tmp_path / "qrels.tsv"
  qrels.write_text("10 Q0 201#0 1\n10 Q0 999#0 1\n", encoding="utf-8")
  with pytest.raises(corpora.CorpusError, match=r"qrels\.tsv: line 2: docid '999#0' is not in"):
    retrieval_data.load_miracl(folder / "topics.tsv", qrels, folder / "corpus.jsonl", "sw")


def test_miracl_topic_without_tab_error_names_file_and_line(tmp_path):
  folder = FIXTURES / "miracl" / "sw"
  topics = tmp_path / "topics.tsv"
  topics.write_text("10\tMji mkuu wa Kenya ni upi?\n11 Mlima uko wapi?\n", encoding="utf-8")
  with pytest.raises(corpora.CorpusError, match=r"topics\.tsv: line 2: expected 'qid<TAB>query'"):
    retrieval_data.load_miracl(topics, folder / "qrels.tsv", folder / "corpus.jsonl", "sw")


def test_miracl_document_without_text_error_names_file_line_and_docid(tmp_path):
  folder = FIXTURES / "miracl" / "sw"
  corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": "201#0", "title": "Nairobi"}])
  with pytest.raises(corpora.CorpusError,
                     match=r"corpus\.jsonl: line 1 \(docid '201#0'\): missing field 'text'"):
    retrieval_data.load_miracl(folder / "topics.tsv", folder / "qrels.tsv", corpus, "sw")
