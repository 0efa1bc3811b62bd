"""mMARCO from its public files (unicamp-dl/mmarco's layout, made here) as a corpus source."""
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import tasks
from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir.data import mmarco
from hybridir.data import text as text_lib
from hybridir.models import families
from tests.conftest import REPO_ROOT

LANGUAGES = ("de", "en", "zh")
WORDS = {"en": ("query", "passage"), "de": ("Frage", "Abschnitt"), "zh": ("问题", "段落")}


def _query(language, qid):
  return f"{WORDS[language][0]} {qid} {'abcdefghij'[qid % 10]}"


def _passage(language, pid):
  return f"{WORDS[language][1]} {pid} {'klmnopqrst'[pid % 10]}."


def write_mmarco(root, num_queries=12, languages=LANGUAGES, extra_passages=5):
  """unicamp-dl/mmarco's files for `num_queries` judged queries (3 triples each; every fifth has
  a second positive later) plus unjudged queries and unused passages; returns {qid: pid}."""
  qids = [1000 + 7 * i for i in range(num_queries)]
  positive = {qid: 50000 + 3 * i for i, qid in enumerate(qids)}
  unused = [90000 + i for i in range(extra_passages)]
  triples = [f"{qid}\t{positive[qid]}\t{unused[(qid + k) % len(unused)]}"
             for k in range(3) for qid in qids]
  triples += [f"{qid}\t{unused[0]}\t{unused[1]}" for qid in qids[::5]]  # Later positives.
  (root / "data").mkdir(parents=True)
  (root / mmarco.TRIPLES).write_text("\n".join(triples) + "\n", encoding="utf-8")
  for language in languages:
    files = mmarco.language_files(str(root), language)
    for path, rows in ((files.queries, [(q, _query(language, q)) for q in qids + [7, 8]]),
                       (files.collection, [(p, _passage(language, p)) for p in
                                           sorted(list(positive.values()) + unused)])):
      (root / path).parent.mkdir(parents=True, exist_ok=True)
      (root / path).write_text("".join(f"{i}\t{t}\n" for i, t in rows), encoding="utf-8")
  return positive


def test_each_query_is_one_pair_with_its_first_positive_in_every_language(tmp_path):
  positive = write_mmarco(tmp_path)
  corpus = mmarco.read_mmarco(str(tmp_path), LANGUAGES)
  assert corpus.languages == LANGUAGES
  assert corpus.pair_ids() == sorted(f"mmarco-{qid}" for qid in positive)
  assert corpus.sources() == {"mmarco": corpus.pair_ids()}
  for language in LANGUAGES:
    for qid, pid in positive.items():
      pair = corpus.pairs[language][f"mmarco-{qid}"]
      assert (pair.question, pair.passage) == (_query(language, qid), _passage(language, pid))
      assert pair.article_id == f"mmarco-passage-{pid}" and pair.answer_sentence is None


def test_max_queries_draws_a_seeded_sample_of_the_queries(tmp_path):
  write_mmarco(tmp_path, num_queries=30)
  read = lambda **kw: mmarco.read_mmarco(str(tmp_path), ["en"], **kw).pair_ids()
  sample = read(max_queries=10, seed=1)
  assert len(sample) == 10 and set(sample) < set(read())
  assert read(max_queries=10, seed=1) == sample != read(max_queries=10, seed=2)


def test_reading_holds_only_the_passages_it_needs(tmp_path):
  write_mmarco(tmp_path, num_queries=4, languages=["en"])
  collection = tmp_path / mmarco.language_files(str(tmp_path), "en").collection
  needed = collection.read_text(encoding="utf-8")
  filler = "".join(f"{i}\t{'x' * 200}\n" for i in range(200000, 300000))  # 20 MB, first.
  collection.write_text(filler + needed, encoding="utf-8")
  tracemalloc.start()
  try:
    corpus = mmarco.read_mmarco(str(tmp_path), ["en"])
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert len(corpus.pair_ids()) == 4
  assert peak < 2_000_000, peak  # A tenth of the collection's 20 MB.


@pytest.mark.parametrize("damage, message", [
    (lambda root: _replace(root, "en", "collection", "50003\t", "50003 "),
     "english_collection.tsv: line 2: expected 'pid<TAB>text', found no tab"),
    (lambda root: _replace(root, "de", "queries", "1007\t", "1006\t"),
     "triples.train.ids.small.tsv: line 2: qid 1007 is not in {german_queries}"),
    (lambda root: _replace(root, "zh", "collection", "50006\t", "60006\t"),
     "triples.train.ids.small.tsv: line 3: pid 50006 is not in {chinese_collection}"),
    (lambda root: (root / mmarco.TRIPLES).write_text("1000\t50000\n", encoding="utf-8"),
     "triples.train.ids.small.tsv: line 1: expected 'qid<TAB>positive pid<TAB>negative pid'"),
    (lambda root: (root / mmarco.TRIPLES).write_text("q1\t50000\t90000\n", encoding="utf-8"),
     "triples.train.ids.small.tsv: line 1: qid 'q1' is not a non-negative integer"),
])
def test_a_damaged_file_is_named_with_its_line_in_one_error(tmp_path, damage, message):
  write_mmarco(tmp_path)
  damage(tmp_path)
  files = {f"{name}_{kind}": getattr(mmarco.language_files(str(tmp_path), language), kind)
           for language, name in (("de", "german"), ("zh", "chinese"))
           for kind in ("queries", "collection")}
  with pytest.raises(corpora.CorpusError) as error:
    mmarco.read_mmarco(str(tmp_path), LANGUAGES)
  assert message.format(**files) in str(error.value) and "\n" not in str(error.value)


def _replace(root, language, kind, old, new):
  path = root / getattr(mmarco.language_files(str(root), language), kind)
  path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")


def test_missing_public_files_are_all_named_before_anything_is_read(tmp_path, capsys):
  write_mmarco(tmp_path, languages=["en"])
  with pytest.raises(FileNotFoundError, match="german_queries.train.tsv, .*german_collection.tsv"):
    mmarco.read_mmarco(str(tmp_path), ["en", "de"])
  assert mmarco.main(["--mmarco_dir", str(tmp_path), "--output", str(tmp_path / "out"),
                      "--languages", "en", "de", "--quiet"]) == 1
  error = capsys.readouterr().err
  assert error.startswith("error: mMARCO: no ") and error.count("\n") == 1
  assert not (tmp_path / "out" / "en.jsonl").exists()


def test_written_pairs_read_back_as_the_same_corpus(tmp_path):
  write_mmarco(tmp_path / "mmarco_files")
  corpus = mmarco.read_mmarco(str(tmp_path / "mmarco_files"), LANGUAGES)
  mmarco.write_corpus(corpus, str(tmp_path / "corpus" / "mmarco"))
  again = corpora.load_parallel_corpus(tmp_path / "corpus")
  assert again.languages == corpus.languages
  assert all(again.pairs[x] == corpus.pairs[x] for x in LANGUAGES)


def test_mmarco_beside_xquad_r_makes_batches_of_each_source_by_size(tmp_path, data_dir):
  write_mmarco(tmp_path / "mmarco_files", num_queries=200)
  corpus_dir = tmp_path / "corpus"
  (corpus_dir / "xquad-r").mkdir(parents=True)
  for language in LANGUAGES:  # Its first 8 articles (~200 questions): fewer texts to tokenise.
    squad = json.loads((data_dir / "xquad-r" / f"{language}.json").read_text(encoding="utf-8"))
    (corpus_dir / "xquad-r" / f"{language}.json").write_text(
        json.dumps({**squad, "data": squad["data"][:8]}), encoding="utf-8")
  command = subprocess.run(
      [sys.executable, "-m", "hybridir.mmarco", "--mmarco_dir", tmp_path / "mmarco_files",
       "--output", corpus_dir / "mmarco", "--languages", *LANGUAGES, "--max_queries", "150",
       "--quiet"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert command.returncode == 0, command.stderr
  assert f"wrote 150 mMARCO pairs in 3 languages to {corpus_dir / 'mmarco'}" in command.stderr
  sizes = {name: len(ids) for name, ids in corpora.load_parallel_corpus(corpus_dir).sources()
           .items()}
  assert sizes["mmarco"] == 150 and sizes["xquad-r"] > 150
  steps, share = 400, sizes["mmarco"] / sum(sizes.values())  # Sources drawn by size.
  batches = subprocess.run(
      [sys.executable, "-m", "hybridir.data", "batches", "--corpus", corpus_dir, "--batch_size",
       "8", "--steps", str(steps)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert batches.returncode == 0, batches.stderr
  lines = [json.loads(line) for line in batches.stdout.splitlines()]
  drawn = [line for line in lines if line["source"] == "mmarco"]
  assert abs(len(drawn) - steps * share) < 4 * np.sqrt(steps * share * (1 - share))
  assert {line["kind"] for line in drawn} == {"mono", "cross"}
  assert all(i.startswith("mmarco-") for line in drawn for i in line["pair_ids"])
  assert not any(i.startswith("mmarco-") for line in lines if line["source"] == "xquad-r"
                 for i in line["pair_ids"])

  texts = [p.question for x in LANGUAGES
           for p in corpora.load_parallel_corpus(corpus_dir).pairs[x].values()]
  spm = families.train_vocabulary("t5", texts, str(tmp_path / "spm"), 800,
                                  character_coverage=0.98)
  mixture = tasks.register_parallel_qa("mm", str(corpus_dir), "t5", spm, languages=LANGUAGES)
  try:
    lengths = {"query": 16, "passage": 24}
    served = input_pipeline.HybridInput("mm_hybrid", lengths, hybrid.HybridSchedule(8))
    step = next(s for s in range(steps) if served.batch_spec(s).source == "mmarco")
    spec, batch = served.batch_spec(step), served.batch(step)
    pair = mixture.corpus.pairs[spec.query_languages[0]][spec.pair_ids[0]]
    expected = text_lib.tokenize(served.vocabulary, "query", pair.question, "", 16)
    assert batch["query_tokens"][0, :len(expected)].tolist() == expected
  finally:
    tasks.unregister_parallel_qa("mm")
