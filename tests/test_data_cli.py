"""Specification of `python -m hybridir.data`: stats and batches print JSON."""
import json
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "hybridir.data", *map(str, args)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, **(env or {})))


def test_stats_prints_lareqa_counts_per_language_as_json(data_dir):
  result = run_cli("stats", "--dataset", "xquad_r", "--data_dir", data_dir / "xquad-r")
  assert result.returncode == 0, result.stderr
  stats = json.loads(result.stdout)
  assert len(stats) == 11
  assert stats["th"] == {"questions": 1190, "candidates": 852, "relevant_pairs": 1190 * 11}


def test_stats_finds_the_dataset_under_hybridir_data_dir(data_dir):
  result = run_cli("stats", "--dataset", "mlqa_r", env={"HYBRIDIR_DATA_DIR": str(data_dir)})
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)["en"]["candidates"] == 6264


def test_batches_prints_one_json_line_per_step(data_dir):
  result = run_cli("batches", "--corpus", data_dir / "xquad-r", "--alpha", "0.5",
                   "--batch_size", "8", "--steps", "5", "--seed", "3")
  assert result.returncode == 0, result.stderr
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line["step"] for line in lines] == [0, 1, 2, 3, 4]
  for line in lines:
    assert line["kind"] in ("mono", "cross") and len(line["pair_ids"]) == 8
    assert {"query_language", "passage_language"} <= set(line)


def test_batches_show_the_source_and_each_examples_languages(data_dir):
  result = run_cli("batches", "--corpus", data_dir / "xquad-r", "--alpha", "0",
                   "--batch_size", "8", "--steps", "2")
  assert result.returncode == 0, result.stderr
  for line in map(json.loads, result.stdout.splitlines()):
    assert line["source"] == "xquad-r" and line["kind"] == "cross"
    assert line["language_pairs"] == [f"{x}-{y}" for x, y in zip(line["query_languages"],
                                                                line["passage_languages"])]
    assert len(set(line["language_pairs"])) > 1


def test_batches_alpha_by_size_is_refused_saying_what_replaced_it(data_dir):
  result = run_cli("batches", "--corpus", data_dir / "xquad-r", "--alpha", "by_size",
                   "--batch_size", "8", "--steps", "1")
  assert result.returncode == 1 and "'by_size' was removed" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1  # One line, no usage text.


def test_batches_hosts_print_disjoint_shares_of_one_batch(data_dir):
  def pair_ids(host_index):
    result = run_cli("batches", "--corpus", data_dir / "mlqa-r", "--alpha", "0.5",
                     "--batch_size", "8", "--steps", "3", "--host_index", host_index,
                     "--host_count", "2")
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["pair_ids"] for line in result.stdout.splitlines()]
  for first, second in zip(pair_ids(0), pair_ids(1)):
    assert len(first) == len(second) == 4 and not set(first) & set(second)


def test_batches_on_a_bad_corpus_exit_with_an_error_naming_the_file(tmp_path):
  (tmp_path / "en.json").write_text('{"data": [', encoding="utf-8")
  result = run_cli("batches", "--corpus", tmp_path, "--batch_size", "2", "--steps", "1")
  assert result.returncode == 1
  assert f"{tmp_path / 'en.json'}: malformed or truncated JSON" in result.stderr
