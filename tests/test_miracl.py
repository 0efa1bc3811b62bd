"""MIRACL in the study: the public files (gzip JSON-lines shards) read as one corpus, the
published sizes enforced, and the study's MIRACL stage over languages, local and on gs://,
resuming by skipping the languages done."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hybridir.cloud import miracl_plan
from hybridir.data import corpora
from hybridir.data import miracl
from hybridir.data import retrieval_data
from hybridir.evaluation import corpus_eval
from hybridir import fs
from tests.conftest import REPO_ROOT
from tests.test_corpus_eval import NUM_PASSAGES
from tests.test_corpus_eval import NUM_TOPICS
from tests.test_corpus_eval import tiny_encoder
from tests.test_corpus_eval import write_gzip_shards
from tests.test_corpus_eval import write_miracl_files

LANGUAGES = ("sw", "te")
SHARDS = 11  # docs-0 ... docs-10: name order must be number order.
STAGE_OPTIONS = dict(allow_subset=True, shard_size=50, depth=20, memory_bytes=1 << 20,
                     batch_size=16)


def write_public_layout(root, language, seed):
  """A tiny language in the public layout under root (topics, qrels, gzip corpus shards), and
  the folder holding the same files as one corpus.jsonl, topics.tsv and qrels.tsv."""
  single = root / "single" / language
  single.mkdir(parents=True)
  write_miracl_files(single, np.random.default_rng(seed))
  files = miracl.language_files(str(root / "public"), language)
  for source, target in ((single / "topics.tsv", files.topics_tsv),
                         (single / "qrels.tsv", files.qrels_trec)):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(source, target)
  lines = (single / "corpus.jsonl").read_text().splitlines(keepends=True)
  write_gzip_shards(lines, os.path.dirname(files.corpus),
                    [len(part) for part in np.array_split(lines, SHARDS)])
  return files, single


@pytest.fixture(scope="module")
def public(tmp_path_factory):
  root = tmp_path_factory.mktemp("miracl")
  layouts = {x: write_public_layout(root, x, seed) for seed, x in enumerate(LANGUAGES)}
  return root / "public", layouts


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, data_dir):
  return tiny_encoder(tmp_path_factory.mktemp("encoder"), data_dir)


def _as_tuples(dataset):
  return ({x: [(q.question_id, q.text, q.relevant) for q in items]
           for x, items in dataset.questions.items()},
          {x: [(c.candidate_id, c.text) for c in items] for x, items in dataset.candidates.items()})


def test_gzip_shards_in_the_public_layout_load_as_the_single_jsonl_they_were_split_from(public):
  _, layouts = public
  files, single = layouts["sw"]
  sharded = retrieval_data.load_miracl(files.topics_tsv, files.qrels_trec, files.corpus, "sw")
  whole = retrieval_data.load_miracl(single / "topics.tsv", single / "qrels.tsv",
                                     single / "corpus.jsonl", "sw")
  assert _as_tuples(sharded) == _as_tuples(whole)
  assert len(sharded.candidates["sw"]) == NUM_PASSAGES


def test_a_corpus_folder_reads_its_shards_in_number_order(public):
  _, layouts = public
  files, _ = layouts["sw"]
  shards = corpora.jsonl_files(os.path.dirname(files.corpus))
  assert [os.path.basename(p) for p in shards] == [f"docs-{i}.jsonl.gz" for i in range(SHARDS)]
  assert shards == corpora.jsonl_files(files.corpus)


def test_a_truncated_gzip_shard_is_an_error_naming_it(public, tmp_path):
  _, layouts = public
  files, _ = layouts["sw"]
  shard = tmp_path / "docs-0.jsonl.gz"
  data = open(fs.glob(files.corpus)[0], "rb").read()
  shard.write_bytes(data[:len(data) // 2])
  with pytest.raises(corpora.CorpusError, match=r"docs-0\.jsonl\.gz: truncated or corrupt gzip"):
    retrieval_data.load_miracl(files.topics_tsv, files.qrels_trec, shard, "sw")


def test_sizes_other_than_published_are_one_line_naming_the_file_and_both_counts(public):
  _, layouts = public
  files, _ = layouts["sw"]
  with pytest.raises(corpora.CorpusError) as error:
    miracl.check_published_counts("sw", files.topics_tsv, NUM_TOPICS, files.corpus, NUM_PASSAGES)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{files.topics_tsv}: {NUM_TOPICS} queries where MIRACL sw dev "
                            "has 482") and "ALLOW_SUBSET" in message
  with pytest.raises(corpora.CorpusError,
                     match=rf"docs-\*\.jsonl\.gz: {NUM_PASSAGES} passages where MIRACL sw dev "
                           "has 131924"):
    miracl.check_published_counts("sw", files.topics_tsv, 482, files.corpus, NUM_PASSAGES)
  miracl.check_published_counts("sw", files.topics_tsv, 482, files.corpus, 131924)


def test_the_study_languages_are_the_sixteen_with_training_data():
  assert miracl.STUDY_LANGUAGES == tuple(
      "ar bn en es fa fi fr hi id ja ko ru sw te th zh".split())
  sizes = [miracl.DEV_SIZES[x][1] for x in miracl.STUDY_LANGUAGES]
  assert (min(sizes), max(sizes)) == (131924, 32893221)  # The paper's sw and en.


def test_the_stage_refuses_a_copy_smaller_than_published_before_writing(public, encoder_dir,
                                                                        tmp_path):
  root, _ = public
  with pytest.raises(corpora.CorpusError, match="queries where MIRACL sw dev has 482"):
    corpus_eval.run_miracl_evaluation(encoder_path=encoder_dir, miracl_dir=str(root),
                                      output_dir=str(tmp_path / "out"), languages=["sw"],
                                      **{**STAGE_OPTIONS, "allow_subset": False})
  assert not (tmp_path / "out" / "sw" / corpus_eval.RESULTS_FILE).exists()


def test_a_language_without_its_files_is_named_before_any_is_read(public, encoder_dir, tmp_path):
  root, _ = public
  with pytest.raises(FileNotFoundError, match=r"MIRACL fi: no .*topics\.miracl-v1\.0-fi-dev\.tsv"):
    corpus_eval.run_miracl_evaluation(encoder_path=encoder_dir, miracl_dir=str(root),
                                      output_dir=str(tmp_path / "out"), languages=["sw", "fi"],
                                      **STAGE_OPTIONS)
  assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def local_stage(public, encoder_dir, tmp_path_factory):
  root, _ = public
  output_dir = tmp_path_factory.mktemp("stage") / "miracl"
  results = corpus_eval.run_miracl_evaluation(
      encoder_path=encoder_dir, miracl_dir=str(root), output_dir=str(output_dir),
      languages=LANGUAGES, **STAGE_OPTIONS)
  return output_dir, results


def test_the_stage_writes_each_languages_results_and_drops_its_index(local_stage):
  output_dir, results = local_stage
  assert set(results) == set(LANGUAGES)
  for language in LANGUAGES:
    written = json.loads((output_dir / language / corpus_eval.RESULTS_FILE).read_text())
    assert written == results[language]
    assert written["num_q"] == NUM_TOPICS and written["recall_100"] > 0.5
    assert 0 < written["ndcg_cut_10"] <= 1
    assert (output_dir / language / corpus_eval.RUN_FILE).exists()
    assert not (output_dir / language / "index").exists()


def test_a_rerun_skips_the_languages_done_and_evaluates_the_rest(local_stage, public,
                                                                 encoder_dir):
  output_dir, results = local_stage
  root, _ = public
  done = output_dir / "sw" / corpus_eval.RESULTS_FILE
  done.write_text('{"ndcg_cut_10": 0.125, "recall_100": 0.25, "num_q": 1}')  # Kept if skipped.
  (output_dir / "te" / corpus_eval.RESULTS_FILE).unlink()
  rerun = corpus_eval.run_miracl_evaluation(
      encoder_path=encoder_dir, miracl_dir=str(root), output_dir=str(output_dir),
      languages=LANGUAGES, **STAGE_OPTIONS)
  assert rerun["sw"] == {"ndcg_cut_10": 0.125, "recall_100": 0.25, "num_q": 1}
  assert rerun["te"] == pytest.approx(results["te"])
  assert json.loads(done.read_text())["num_q"] == 1


def test_the_stage_loads_the_encoder_once_for_every_language_and_not_when_all_are_done(
    public, encoder_dir, tmp_path, monkeypatch):
  root, _ = public
  loads = []
  load_encoder = corpus_eval.exporter.load_encoder
  monkeypatch.setattr(corpus_eval.exporter, "load_encoder",
                      lambda *args, **kwargs: loads.append(kwargs) or load_encoder(*args, **kwargs))
  for _ in range(2):  # The second run finds every language done.
    corpus_eval.run_miracl_evaluation(encoder_path=encoder_dir, miracl_dir=str(root),
                                      output_dir=str(tmp_path / "miracl"), languages=LANGUAGES,
                                      **STAGE_OPTIONS)
  assert loads == [{"batch_size": 16, "num_partitions": 1}]


def test_a_rerun_refuses_results_of_another_encoder(local_stage, public, encoder_dir, tmp_path):
  output_dir, _ = local_stage
  root, _ = public
  copy = tmp_path / "miracl"
  shutil.copytree(output_dir, copy)
  (copy / "te" / corpus_eval.ENCODER_FILE).write_text(
      '{"step": 3, "training_checkpoint": "gs://b/study/run"}')  # An earlier export's.
  with pytest.raises(ValueError, match=r"te/results\.json: the results of encoder \{'step': 3"):
    corpus_eval.run_miracl_evaluation(encoder_path=encoder_dir, miracl_dir=str(root),
                                      output_dir=str(copy), languages=LANGUAGES, **STAGE_OPTIONS)


def upload(folder: pathlib.Path, url: str) -> None:
  for path in sorted(p for p in folder.rglob("*") if p.is_file()):
    fs.copy_file(path, f"{url}/{path.relative_to(folder)}")


@pytest.mark.slow
def test_the_stage_gin_run_reads_and_writes_gcs_and_resumes(public, encoder_dir, gcs_bucket):
  root, _ = public
  remote_root, encoder = f"{gcs_bucket}/miracl", f"{gcs_bucket}/encoder"
  upload(root, remote_root)
  upload(pathlib.Path(encoder_dir), encoder)
  output_dir = f"{gcs_bucket}/study/mt5_tiny_hybrid_seed0/miracl"
  command = [sys.executable, "-m", "hybridir.main",
             "--gin_file=gin_configs/runs/study/miracl.gin", f"--gin.MODEL_DIR='{output_dir}'",
             f"--gin.ENCODER_PATH='{encoder}'", f"--gin.MIRACL_DIR='{remote_root}'",
             f"--gin.MIRACL_LANGUAGES={list(LANGUAGES)}", "--gin.ALLOW_SUBSET=True",
             "--gin.SHARD_SIZE=50", "--gin.DEPTH=20", "--gin.SEARCH_MEMORY_BYTES=1048576",
             "--gin.BATCH_SIZE=16"]
  first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  for language in LANGUAGES:
    results = json.loads(fs.read_text(f"{output_dir}/{language}/{corpus_eval.RESULTS_FILE}"))
    assert results["num_q"] == NUM_TOPICS and results["recall_100"] > 0.5
    assert not fs.exists(f"{output_dir}/{language}/index")
  second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert all(f"MIRACL {x}: {output_dir}/{x}/{corpus_eval.RESULTS_FILE} exists, skipping" in
             second.stderr for x in LANGUAGES)


def test_a_plan_shares_the_published_passages_by_bytes_and_hosts_by_shards(tmp_path):
  sizes = [300, 100, 100, 500]
  paths = [str(tmp_path / f"docs-{i}.jsonl.gz") for i in range(4)]
  corpus = miracl_plan.estimated_corpus(paths, sizes, 1001)
  assert [f.records for f in corpus.files] == [300, 100, 100, 501]
  hosts = miracl_plan.host_plan(corpus, 200, 2)  # 6 shards: 3 a host.
  assert hosts == ["host 0: 600 passages: docs-0.jsonl.gz … docs-2.jsonl.gz (whole, 3 files), "
                   "docs-3.jsonl.gz records 0-99",
                   "host 1: 401 passages: docs-3.jsonl.gz records 100-500"]


@pytest.mark.slow
def test_the_sweeps_dry_run_prints_the_miracl_stages_plan_per_language_and_host(public,
                                                                                tmp_path):
  root, _ = public
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\nif [ \"$1 $2\" = 'config get-value' ]; then echo my-project; fi\n")
  fake.chmod(0o755)
  result = subprocess.run(
      ["launch/study_sweep.sh", "--bucket", "gs://b/study", "--corpus_dir", "gs://b/corpus",
       "--zone", "us-central2-b", "--accelerator_type", "v4-32", "--models", "mt5_base",
       "--strategies", "hybrid", "--seeds", "0", "--miracl_dir", str(root),
       "--miracl_languages", "sw te", "--dry-run"], cwd=REPO_ROOT, capture_output=True,
      text=True, timeout=300,
      env=dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", PYTHON=sys.executable))
  assert result.returncode == 0 and "no MIRACL plan" not in result.stderr, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith("MIRACL stage on v4-32 (4 hosts, 4 chips each")
  for language, size in (("sw", 131924), ("te", 518079)):
    at = lines.index(next(l for l in lines if l.startswith(f"MIRACL {language}: ")))
    assert lines[at].startswith(f"MIRACL {language}: {size:,} passages in {SHARDS} files")
    hosts = lines[at + 1:at + 5]
    assert [h.split(":")[0] for h in hosts] == [f"  host {i}" for i in range(4)]
    assert sum(int(h.split(": ")[1].split()[0].replace(",", "")) for h in hosts) == size
    assert lines[at + 5].startswith("  mt5_base: index ") and "GFLOP a passage" in lines[at + 5]
  assert any(line.startswith("+ ") and "hybridir.main" in line for line in lines)
