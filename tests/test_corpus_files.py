"""A corpus spread over gzip JSON-lines files is counted once, cut into contiguous ranges and
streamed from any position; every malformed shard ends the corpus evaluation in one line naming
its file and line."""
import gzip
import json
import os
import re

import numpy as np
import pytest

from hybridir.data import corpora
from hybridir.data import corpus_files
from hybridir.data import retrieval_data
from hybridir.evaluation import corpus_eval
from hybridir.evaluation import corpus_index
from hybridir.export import exporter
from tests.test_corpus_eval import tiny_encoder
from tests.test_corpus_eval import write_gzip_shards
from tests.test_corpus_index import encode_killed_after_two_shards
from tests.test_corpus_index import read_index


def record(i, **fields):
  return json.dumps({"docid": f"d{i}", "title": f"title {i}", "text": f"passage {i} text",
                     **fields}) + "\n"


def write_corpus(folder, sizes, blank_every=0):
  """Files docs-<i>.jsonl.gz of `sizes` records (docids d0, d1, ... across files), with a blank
  line after every `blank_every`-th record: records are then not lines."""
  files, i = [], 0
  for size in sizes:
    files.append([])
    for _ in range(size):
      files[-1].append(record(i))
      if blank_every and i % blank_every == 0:
        files[-1].append("\n")
      i += 1
  return write_gzip_shards(sum(files, []), folder, [len(lines) for lines in files])


def counted(pattern):
  return corpus_files.CorpusFiles(tuple(corpus_files.count_records(p)
                                        for p in corpora.jsonl_files(pattern)))


def test_records_from_any_position_are_the_files_read_in_order(tmp_path):
  corpus = counted(write_corpus(tmp_path, (5, 0, 7, 3), blank_every=2))
  assert [f.records for f in corpus.files] == [5, 0, 7, 3] and len(corpus) == 15
  everything = list(corpus.records(0))
  assert [r["docid"] for _, r in everything] == [f"d{i}" for i in range(15)]
  for start in (1, 5, 6, 12, 14):
    assert list(corpus.records(start)) == everything[start:]
  assert corpus.locate(5) == (2, 0) and corpus.locate(14) == (3, 2)
  # Blank lines are not records: d7 (docs-2's third record) is on its line 4.
  assert everything[7][0] == f"{corpus.files[2].path}: line 4" == corpus.where(7)


def test_segments_cut_a_range_at_file_boundaries_and_describe_what_a_host_reads(tmp_path):
  corpus = counted(write_corpus(tmp_path, (5, 7, 3, 4)))
  names = [(os.path.basename(f.path), first, stop) for f, first, stop in corpus.segments(3, 16)]
  assert names == [("docs-0.jsonl.gz", 3, 5), ("docs-1.jsonl.gz", 0, 7),
                   ("docs-2.jsonl.gz", 0, 3), ("docs-3.jsonl.gz", 0, 1)]
  assert corpus_files.describe_segments(corpus.segments(3, 16)) == (
      "docs-0.jsonl.gz records 3-4, docs-1.jsonl.gz … docs-2.jsonl.gz (whole, 2 files), "
      "docs-3.jsonl.gz records 0-0")


def test_each_process_counts_about_its_share_of_the_bytes():
  sizes = [100] * 10 + [1000]
  shares = [corpus_files.files_to_count(sizes, p, 2) for p in range(2)]
  assert sorted(shares[0] + shares[1]) == list(range(11))
  assert shares == [list(range(10)), [10]]  # The big file is the second half of the bytes.
  assert corpus_files.files_to_count([5], 1, 4) == [] and corpus_files.files_to_count([5], 0, 1)


def test_processes_encode_contiguous_blocks_of_shards_balanced_within_one():
  blocks = [corpus_index.shards_of_process(11, p, 4) for p in range(4)]
  assert blocks == [[0, 1], [2, 3, 4], [5, 6, 7], [8, 9, 10]]
  spans = [corpus_index.passages_of_process(1000, 100, p, 3) for p in range(3)]
  assert spans == [(0, 300), (300, 600), (600, 1000)]


def test_counts_are_written_beside_the_index_and_reused_unless_the_file_changed(tmp_path,
                                                                                monkeypatch):
  pattern = write_corpus(tmp_path / "docs", (4, 6))
  paths = corpora.jsonl_files(pattern)
  index_dir = str(tmp_path / "index")
  assert len(corpus_index.count_corpus(index_dir, paths)) == 10
  counted_paths = []
  count_records = corpus_files.count_records
  monkeypatch.setattr(corpus_files, "count_records",
                      lambda path: counted_paths.append(path) or count_records(path))
  assert len(corpus_index.count_corpus(index_dir, paths)) == 10 and counted_paths == []
  with gzip.open(paths[1], "at") as f:  # Appended to: another size, counted again.
    f.write(record(10))
  assert len(corpus_index.count_corpus(index_dir, paths)) == 11 and counted_paths == [paths[1]]


def test_a_file_changed_since_counted_is_named_when_read(tmp_path):
  pattern = write_corpus(tmp_path, (4, 3))
  corpus = counted(pattern)
  path = corpora.jsonl_files(pattern)[0]
  with gzip.open(path, "wt") as f:
    f.writelines(record(i) for i in range(2))
  with pytest.raises(corpora.CorpusError, match=r"docs-0\.jsonl\.gz: 2 records where it had 4 "
                                                r"when counted .*changed since"):
    list(corpus.records(0))


def test_ids_hash_alike_whatever_the_array_width():
  narrow, wide = np.array(["a", "bc"]), np.array(["a", "bc", "longer id"])
  assert (corpus_index.id_hashes(narrow) == corpus_index.id_hashes(wide)[:2]).all()
  assert len(set(corpus_index.id_hashes(np.array(["ab", "ba", "a", "b", "ab#0"])))) == 5


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, data_dir):
  return exporter.load_encoder(tiny_encoder(tmp_path_factory.mktemp("encoder"), data_dir),
                             batch_size=16)


def evaluate(encoder, folder, corpus, **options):
  """A corpus evaluation of `corpus` with one topic judging d0."""
  (folder / "topics.tsv").write_text("q0\tpassage text\n")
  (folder / "qrels.tsv").write_text("q0 Q0 d0 1\n")
  return corpus_eval.evaluate_corpus(
      encoder, topics_tsv=str(folder / "topics.tsv"), qrels_trec=str(folder / "qrels.tsv"),
      corpus_jsonl=corpus, language="sw", output_dir=str(folder / "out"),
      **{"shard_size": 4, "depth": 5, "memory_bytes": 1 << 20, "allow_subset": True, **options})


def one_line_error(encoder, folder, corpus, **options) -> str:
  with pytest.raises(corpora.CorpusError) as error:
    evaluate(encoder, folder, corpus, **options)
  assert "\n" not in str(error.value)
  return str(error.value)


def replace_line(path, number, line):
  with gzip.open(path, "rt") as f:
    lines = f.readlines()
  lines[number - 1] = line
  with gzip.open(path, "wt") as f:
    f.writelines(lines)


def test_a_well_formed_corpus_evaluates(encoder, tmp_path):
  results = evaluate(encoder, tmp_path, write_corpus(tmp_path / "docs", (5, 6)))
  assert results["num_q"] == 1


@pytest.mark.parametrize("line,message", [
    ('{"docid": "d7", "title": "t"}\n', r"line 3 \(docid 'd7'\): missing field 'text'"),
    ('{"docid": "d7", "text": "x"}\n', r"line 3 \(docid 'd7'\): missing field 'title'"),
    ('{"title": "t", "text": "x"}\n', r"line 3: missing field 'docid'"),
    ('{"docid": "d7", "title": \n', r"line 3: malformed or truncated JSON"),
])
def test_a_malformed_record_names_its_file_and_line(encoder, tmp_path, line, message):
  corpus = write_corpus(tmp_path / "docs", (5, 6))
  replace_line(tmp_path / "docs" / "docs-1.jsonl.gz", 3, line)
  assert re.search(rf"docs-1\.jsonl\.gz: {message}",
                   one_line_error(encoder, tmp_path, corpus))


def test_a_duplicate_docid_in_one_shard_names_both_lines(encoder, tmp_path):
  corpus = write_corpus(tmp_path / "docs", (5, 6))
  replace_line(tmp_path / "docs" / "docs-0.jsonl.gz", 3, record(1))  # Shard 0: d0-d3.
  assert one_line_error(encoder, tmp_path, corpus).endswith(
      f"docs-0.jsonl.gz: line 3: duplicate docid 'd1' (first at "
      f"{tmp_path / 'docs' / 'docs-0.jsonl.gz'}: line 2)")
  assert not (tmp_path / "out" / "index" / "shard-00000-of-00003.npy").exists()


def test_a_duplicate_docid_across_shards_and_files_names_both_lines(encoder, tmp_path):
  corpus = write_corpus(tmp_path / "docs", (5, 6))
  replace_line(tmp_path / "docs" / "docs-1.jsonl.gz", 5, record(2))  # d9, shard 2, is d2 again.
  assert one_line_error(encoder, tmp_path, corpus).endswith(
      f"docs-1.jsonl.gz: line 5: duplicate docid 'd2' (first at "
      f"{tmp_path / 'docs' / 'docs-0.jsonl.gz'}: line 3)")


def test_a_truncated_gzip_shard_is_named_before_anything_is_encoded(encoder, tmp_path):
  corpus = write_corpus(tmp_path / "docs", (50, 6))
  path = tmp_path / "docs" / "docs-0.jsonl.gz"
  path.write_bytes(path.read_bytes()[:-30])
  assert re.search(r"docs-0\.jsonl\.gz: truncated or corrupt gzip after line \d+",
                   one_line_error(encoder, tmp_path, corpus))
  assert not list((tmp_path / "out" / "index").glob("shard-*"))


def test_a_judged_docid_the_corpus_lacks_names_the_qrels_line(encoder, tmp_path):
  corpus = write_corpus(tmp_path / "docs", (5, 6))
  replace_line(tmp_path / "docs" / "docs-0.jsonl.gz", 1, record(99))  # d0, judged, is gone.
  assert one_line_error(encoder, tmp_path, corpus) == (
      f"{tmp_path / 'qrels.tsv'}: line 1: docid 'd0' is not in {corpus}")


def test_a_corpus_smaller_than_published_is_refused_naming_both_counts(encoder, tmp_path):
  corpus = write_corpus(tmp_path / "docs", (5, 6))
  (tmp_path / "topics.tsv").write_text("".join(f"q{i}\tpassage text\n" for i in range(482)))
  (tmp_path / "qrels.tsv").write_text("q0 Q0 d0 1\n")
  with pytest.raises(corpora.CorpusError) as error:
    corpus_eval.evaluate_corpus(
        encoder, topics_tsv=str(tmp_path / "topics.tsv"), qrels_trec=str(tmp_path / "qrels.tsv"),
        corpus_jsonl=corpus, language="sw", output_dir=str(tmp_path / "out"))
  assert str(error.value).startswith(f"{corpus}: 11 passages where MIRACL sw dev has 131924")
  assert not list((tmp_path / "out" / "index").glob("shard-*"))


def test_a_streamed_encoding_killed_mid_file_resumes_to_the_index_of_one_pass(encoder, tmp_path,
                                                                              monkeypatch):
  corpus = counted(write_corpus(tmp_path / "docs", (5, 6)))  # Shard 2 starts in docs-1.
  source = corpus_index.StreamedPassages(encoder, corpus, retrieval_data.miracl_passage)
  encode_killed_after_two_shards(encoder, source, str(tmp_path / "resumed"), 4, monkeypatch)
  fresh = corpus_index.StreamedPassages(encoder, corpus, retrieval_data.miracl_passage)
  resumed = corpus_index.encode_corpus(encoder, fresh, str(tmp_path / "resumed"), 4,
                                       progress=False)
  assert (resumed["encoded_shards"], resumed["skipped_shards"]) == (1, 2)
  corpus_index.encode_corpus(encoder, corpus_index.StreamedPassages(
      encoder, corpus, retrieval_data.miracl_passage), str(tmp_path / "one_pass"), 4,
                             progress=False)
  ids, embeddings = read_index(str(tmp_path / "resumed"))
  assert ids == [f"d{i}" for i in range(11)] == read_index(str(tmp_path / "one_pass"))[0]
  np.testing.assert_array_equal(embeddings, read_index(str(tmp_path / "one_pass"))[1])
