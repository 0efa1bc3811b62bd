"""The malformed-input catalogue: each bad input ends its command with one exact line `error: ...`
(status 1, no traceback) naming the file, record or parameter, and leaves no output behind.

`python -m tests.test_malformed_inputs` runs the catalogue and prints the table of RELIABILITY.md.
"""
import atexit
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

from absl import app
import gin
import pytest

from hybridir.data import describe as data_cli
from hybridir.data import retrieval_data
from hybridir.data import spm as spm_cli
from hybridir import errors
from hybridir.evaluation import evaluate as evaluate_cli
from hybridir.export import artifacts
from hybridir.export import exporter
from hybridir.export import hf_export
from hybridir import gin_run as gin_run_lib
from hybridir import gin_utils
from hybridir import main as main_lib
from hybridir.models import dual_encoder
from hybridir.models import families
from hybridir.study import study_gather
from hybridir.translation import translate as translate_cli
from tests import reference_models
from tests.conftest import REPO_ROOT
from tests.conftest import shared_data_dir
from tests.test_faults import flip_bytes
from tests.test_main import heavy_imports
from tests.test_main import own_lines


@dataclasses.dataclass(frozen=True)
class Case:
  """`make(tmp)` writes the bad input under tmp and returns (command, run, expected, outputs):
  `run()` gives (status, stdout, stderr); `outputs` must not exist afterwards."""
  name: str
  tried: str
  make: Callable


def squad(path: pathlib.Path, question_ids) -> pathlib.Path:
  """A LAReQA-style SQuAD file: one paragraph of two sentences, one question per id."""
  context = "The sky is blue. Grass is green."
  qas = [{"id": qid, "question": "What colour is the sky?",
          "answers": [{"text": "blue", "answer_start": 11}]} for qid in question_ids]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"data": [{"title": "Colours", "paragraphs": [
      {"context": context, "qas": qas}]}]}))
  return path


def jsonl(path: pathlib.Path, *records) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return path


def record(pair_id="q1", lang="en", **fields):
  return {"id": pair_id, "lang": lang, "question": "Why?", "passage": "Because.", **fields}


def argparse_cli(main: Callable, argv) -> Callable:
  """Runs an argparse CLI's main(argv) in this process: (status, stdout, stderr)."""
  def run():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        status = main([str(a) for a in argv])
      except SystemExit as e:  # A mistake in the arguments (console.ArgumentParser).
        status = e.code
    return status, out.getvalue(), err.getvalue()
  return run


def absl_cli(body: Callable) -> Callable:
  """Runs an absl CLI's body as its main does (console.run_app): a UsageError as one line
  `error: ...`, an expected error through gin_run.one_line_errors."""
  def run():
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        body()
      except app.UsageError as e:
        print(errors.one_line(e), file=sys.stderr)
        status = 1
      except SystemExit as e:
        status = e.code
    return status, out.getvalue(), err.getvalue()
  return run


def gin_run(files, bindings, flags=()) -> Callable:
  """`python -m hybridir.main --gin_file=... --gin.KEY=VALUE...`, in this process: the checks
  made before the heavy imports, then the run."""
  def body():
    main_lib.check_command_line(["hybridir.main", *(f"--gin_file={f}" for f in files),
                                 *(f"--gin_bindings={b}" for b in bindings), *flags])
    gin.clear_config()
    try:
      main_lib.parse_config(files, bindings)
      with gin_run_lib.one_line_errors():
        gin_run_lib.run_parsed_config()
    finally:
      gin.clear_config()
  return absl_cli(body)


def a_file(tmp):
  """A plain file: outputs asked for beneath it cannot be written (as root too)."""
  path = tmp / "a_file"
  path.write_text("x")
  return path


# --- cases --------------------------------------------------------------------------------------

def data_stats_missing_language_file(tmp):
  folder = tmp / "xquad-r"
  squad(folder / "en.json", ["q1"])
  return ("data stats", argparse_cli(data_cli.main, [
      "stats", "--dataset", "xquad_r", "--data_dir", tmp, "--languages", "en", "de"]),
      f"error: {folder}: no de.json for xquad_r language(s) ['de'] (choose the languages to "
      "load to leave them out)", [])


def data_stats_truncated_file(tmp):
  path = squad(tmp / "xquad-r" / "en.json", ["q1"])
  path.write_text(path.read_text()[:50])
  return ("data stats", argparse_cli(data_cli.main, [
      "stats", "--dataset", "xquad_r", "--data_dir", tmp, "--languages", "en"]),
      f"error: {path}: malformed or truncated JSON at line 1 column 48: Unterminated string "
      "starting at", [])


def data_stats_duplicate_question_id(tmp):
  path = squad(tmp / "xquad-r" / "en.json", ["q1", "q1"])
  return ("data stats", argparse_cli(data_cli.main, [
      "stats", "--dataset", "xquad_r", "--data_dir", tmp, "--languages", "en"]),
      f"error: {path}: record id 'q1': duplicate id", [])


def data_stats_unknown_language(tmp):
  squad(tmp / "xquad-r" / "en.json", ["q1"])
  return ("data stats", argparse_cli(data_cli.main, [
      "stats", "--dataset", "xquad_r", "--data_dir", tmp, "--languages", "english"]),
      "error: languages argument for xquad_r: unknown language code 'english' (expected an ISO "
      "639 code of an mT5 or XLM-R language, e.g. 'en', 'zh', 'ceb')", [])


def _batches(corpus):
  return argparse_cli(data_cli.main, ["batches", "--corpus", corpus, "--batch_size", "2",
                                      "--steps", "1"])


def data_batches_bad_json_line(tmp):
  path = jsonl(tmp / "corpus" / "en.jsonl", record("q1"), '{"id": "q2", "lang": "en"')
  return ("data batches", _batches(tmp / "corpus"),
          f"error: {path}: line 2: malformed or truncated JSON: Expecting ',' delimiter", [])


def data_batches_not_utf8(tmp):
  line = json.dumps(record("q2")).encode().replace(b"Why?", b"Caf\xe9?")
  path = tmp / "corpus" / "en.jsonl"
  jsonl(path, record("q1"))
  with open(path, "ab") as f:
    f.write(line + b"\n")
  column = line.index(b"\xe9") + 1
  return ("data batches", _batches(tmp / "corpus"),
          f"error: {path}: line 2 column {column}: not UTF-8 text (byte e9: invalid continuation "
          "byte)", [])


def data_batches_duplicate_id(tmp):
  path = jsonl(tmp / "corpus" / "en.jsonl", record("q1"), record("q1"))
  return ("data batches", _batches(tmp / "corpus"),
          f"error: {path}: record id 'q1': duplicate id in language 'en'", [])


def data_batches_empty_corpus(tmp):
  (tmp / "corpus").mkdir()
  return ("data batches", _batches(tmp / "corpus"),
          f"error: {tmp / 'corpus'}: no <lang>.json or .jsonl QA files found", [])


def data_batches_missing_corpus(tmp):
  return ("data batches", _batches(tmp / "nowhere"),
          f"error: {tmp / 'nowhere'}: no such file or folder", [])


def data_batches_wrong_language_code(tmp):
  path = jsonl(tmp / "corpus" / "en.jsonl", record("q1", lang="english"))
  return ("data batches", _batches(tmp / "corpus"),
          f"error: {path}: line 1 (record id 'q1'): unknown language code 'english' (expected an "
          "ISO 639 code of an mT5 or XLM-R language, e.g. 'en', 'zh', 'ceb')", [])


def data_batches_missing_field(tmp):
  path = jsonl(tmp / "corpus" / "en.jsonl", {"id": "q1", "lang": "en", "passage": "Because."})
  return ("data batches", _batches(tmp / "corpus"),
          f"error: {path}: line 1 (record id 'q1'): missing field 'question'", [])


def spm_unwritable_output(tmp):
  corpus = jsonl(tmp / "corpus" / "en.jsonl", record("q1"))
  output = a_file(tmp) / "vocab" / "spm"
  return ("spm", argparse_cli(spm_cli.main, [
      "--corpus", corpus, "--family", "t5", "--vocab_size", "100", "--output", output]),
      f"error: --output: cannot write to {output}: {tmp / 'a_file'} is a file, not a folder",
      [f"{output}.model"])


def spm_missing_corpus(tmp):
  output = tmp / "vocab" / "spm"
  return ("spm", argparse_cli(spm_cli.main, [
      "--corpus", tmp / "nowhere", "--family", "t5", "--vocab_size", "100", "--output", output]),
      f"error: {tmp / 'nowhere'}: no such file or folder", [tmp / "vocab"])


def _translate(tmp, output, model, languages="de"):
  source = jsonl(tmp / "input.jsonl", record("q1"))
  return argparse_cli(translate_cli.main, [
      "--input", source, "--source_language", "en", "--languages", languages, "--model", model,
      "--output", output, "--quiet"])


def translate_missing_model(tmp):
  output = tmp / "translated"
  return ("translate", _translate(tmp, output, tmp / "models" / "opus-mt-{src}-{tgt}"),
          f"error: --model: no model folder '{tmp}/models/opus-mt-en-de' for en->de", [output])


def translate_unwritable_output(tmp):
  (tmp / "model").mkdir()
  output = a_file(tmp) / "translated"
  return ("translate", _translate(tmp, output, tmp / "model"),
          f"error: --output: cannot write to {output}: {tmp / 'a_file'} is a file, not a folder",
          [output])


def translate_wrong_language_code(tmp):
  output = tmp / "translated"
  return ("translate", _translate(tmp, output, tmp / "model", languages="de,deutsch"),
          "error: --languages: unknown language code 'deutsch' (expected an ISO 639 code of an "
          "mT5 or XLM-R language, e.g. 'en', 'zh', 'ceb')", [output])


def evaluate_bad_run_line(tmp):
  run = tmp / "x.run"
  run.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 2\n")
  qrels = tmp / "x.qrels"
  qrels.write_text("q1 0 d1 1\n")
  return ("evaluate", argparse_cli(evaluate_cli.main, ["--run", run, "--qrels", qrels]),
          f"error: {run}:2: expected 6 fields 'qid Q0 docid rank score tag', found 4: "
          "'q1 Q0 d2 2'", [])


def evaluate_missing_qrels(tmp):
  run = tmp / "x.run"
  run.write_text("q1 Q0 d1 1 0.5 tag\n")
  return ("evaluate", argparse_cli(evaluate_cli.main, ["--run", run, "--qrels", tmp / "no.qrels"]),
          f"error: --qrels {tmp / 'no.qrels'}: no such file or folder (python -m hybridir.evaluate "
          "--help lists the options)", [])


def _beir(tmp, corpus=({"_id": "d1", "title": "", "text": "Because."},),
          queries=({"_id": "q1", "text": "Why?"},),
          qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n"):
  """(paths of BEIR files with these records, the evaluate --encoder command over them)."""
  paths = (jsonl(tmp / "corpus.jsonl", *corpus), jsonl(tmp / "queries.jsonl", *queries),
           tmp / "qrels.tsv")
  paths[2].write_text(qrels)
  (tmp / "encoder").mkdir()
  return paths, argparse_cli(evaluate_cli.main, [
      "--encoder", tmp / "encoder", "--corpus", paths[0], "--queries", paths[1], "--qrels",
      paths[2], "--output_dir", tmp / "eval"])


def evaluate_missing_corpus(tmp):
  (tmp / "encoder").mkdir()
  (tmp / "qrels.tsv").write_text("q1\td1\t1\n")
  return ("evaluate --encoder", argparse_cli(evaluate_cli.main, [
      "--encoder", tmp / "encoder", "--corpus", tmp / "corpus.jsonl", "--queries",
      jsonl(tmp / "queries.jsonl", {"_id": "q1", "text": "Why?"}), "--qrels", tmp / "qrels.tsv"]),
      f"error: --corpus {tmp / 'corpus.jsonl'}: no such file or folder (python -m "
      "hybridir.evaluate --help lists the options)", [])


def beir_case(expected: str, **records) -> Callable:
  """A case of `evaluate --encoder` over BEIR files with these records (_beir's arguments):
  `expected` names the files as {corpus}, {queries} and {qrels}."""
  def make(tmp):
    (corpus, queries, qrels), run = _beir(tmp, **records)
    return ("evaluate --encoder", run, "error: " + expected.format(
        corpus=corpus, queries=queries, qrels=qrels), [tmp / "eval"])
  return make


_EMPTY = "no records (an empty file; expected a JSON object with _id and text per line)"


def evaluate_gzip_shard_not_utf8(tmp):
  lines = [json.dumps({"_id": f"d{i}", "text": "Because."}).encode() for i in range(3)]
  lines[2] = lines[2].replace(b"Because", b"Bec\xffause")
  corpus = tmp / "corpus.jsonl.gz"
  corpus.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
  queries, qrels = jsonl(tmp / "queries.jsonl", {"_id": "q1", "text": "Why?"}), tmp / "qrels.tsv"
  qrels.write_text("q1\td1\t1\n")
  (tmp / "encoder").mkdir()  # Read after the corpus: its error comes first.
  column = lines[2].index(b"\xff") + 1
  return ("evaluate --encoder", argparse_cli(evaluate_cli.main, [
      "--encoder", tmp / "encoder", "--corpus", corpus, "--queries", queries, "--qrels", qrels,
      "--output_dir", tmp / "eval"]),
      f"error: {corpus}: line 3 column {column}: not UTF-8 text (byte ff: invalid start byte) "
      "(a corrupt gzip shard?)", [tmp / "eval"])


def _smoke(tmp, *bindings):
  return gin_run(["gin_configs/runs/smoke.gin"], [
      f"SPM_PREFIX = '{tmp / 'vocab' / 'spm'}'", *bindings])


def main_misspelled_macro(tmp):
  return ("main (smoke.gin)", _smoke(tmp, f"MODEL_DIR = '{tmp / 'run'}'", "TRAIN_STEP = 3"),
          "error: gin binding 'TRAIN_STEP = 3': no included file declares the macro TRAIN_STEP; "
          "did you mean TRAIN_STEPS, TRAIN_SPLIT?", [tmp / "run", tmp / "vocab"])


def main_unknown_parameter(tmp):
  return ("main (smoke.gin)", _smoke(tmp, f"MODEL_DIR = '{tmp / 'run'}'",
                                     "trainer.train.nonsense = 1"),
          "error: Configurable 'trainer.train' doesn't have a parameter named 'nonsense'. In "
          "bindings string line 3 trainer.train.nonsense = 1", [tmp / "run", tmp / "vocab"])


_SEARCHED = " and ".join(["looked in the working directory", *gin_utils.GIN_ROOTS])


def main_missing_gin_file(tmp):
  return ("main", gin_run(["gin_configs/runs/smok.gin"], [f"MODEL_DIR = '{tmp / 'run'}'"]),
          f"error: --gin_file=gin_configs/runs/smok.gin: no such gin file ({_SEARCHED}; the run "
          "files are gin_configs/runs/*.gin)", [tmp / "run"])


def main_missing_include(tmp):
  run_file = tmp / "mine.gin"
  run_file.write_text("include 'gin_configs/runs/trian.gin'\n")
  return ("main", gin_run([run_file], []),
          f"error: {run_file}: line 1: include 'gin_configs/runs/trian.gin': no such gin file "
          f"({_SEARCHED}; the run files are gin_configs/runs/*.gin)", [])


def main_unquoted_string(tmp):
  return ("main (smoke.gin)", _smoke(tmp, f"MODEL_DIR = {tmp / 'run'}"),
          f"error: gin binding 'MODEL_DIR = {tmp / 'run'}': '{tmp / 'run'}' is not a gin value; a "
          f"string takes gin's quotes inside the shell's: --gin.MODEL_DIR=\"'{tmp / 'run'}'\"",
          [tmp / "run", tmp / "vocab"])


def main_required_setting_unbound(tmp):
  return ("main (export.gin)", gin_run(["gin_configs/runs/export.gin"],
                                       [f"EXPORT_DIR = '{tmp / 'export'}'"]),
          "error: MODEL_DIR is required (gin_configs/runs/export.gin: line 13 sets MODEL_DIR to "
          "%gin.REQUIRED): bind it, e.g. --gin.MODEL_DIR=\"'...'\"", [tmp / "export"])


def main_export_without_a_run(tmp):
  return ("main (export.gin)", gin_run(["gin_configs/runs/export.gin"], [
      f"MODEL_DIR = '{tmp / 'run'}'", f"EXPORT_DIR = '{tmp / 'run' / 'export'}'"]),
      f"error: MODEL_DIR (export_from_training_checkpoint.model_dir): {tmp / 'run'}: no such file "
      "or folder; train a run there first (gin_configs/runs/train.gin or smoke.gin)",
      [tmp / "run"])


def main_export_of_a_folder_without_a_run(tmp):
  (tmp / "run").mkdir()
  return ("main (export.gin)", gin_run(["gin_configs/runs/export.gin"], [
      f"MODEL_DIR = '{tmp / 'run'}'", f"EXPORT_DIR = '{tmp / 'run' / 'export'}'"]),
      f"error: MODEL_DIR (export_from_training_checkpoint.model_dir): {tmp / 'run'} holds no "
      "training run (no checkpoints/ or encoder.json): give the MODEL_DIR a training run wrote",
      [tmp / "run" / "export"])


def main_missing_corpus(tmp):
  return ("main (smoke.gin)", _smoke(tmp, f"MODEL_DIR = '{tmp / 'run'}'",
                                     f"CORPUS_DIR = '{tmp / 'corpus'}'"),
          f"error: CORPUS_DIR (register_parallel_qa.corpus_path): {tmp / 'corpus'}: no such file "
          "or folder", [tmp / "run", tmp / "vocab"])


def main_misspelled_flag(tmp):
  return ("main", gin_run([], [], flags=["--gin_fil=gin_configs/runs/smoke.gin"]),
          "error: Unknown command line flag 'gin_fil'. Did you mean: gin_file ? (--helpfull lists "
          "the flags)", [])


def hf_export_missing_encoder(tmp):
  return ("hf_export", argparse_cli(hf_export.main, [
      "--encoder", tmp / "export", "--output", tmp / "hf"]),
      f"error: --encoder {tmp / 'export'}: no such file or folder (python -m hybridir.hf_export "
      "--help lists the options)", [tmp / "hf"])


def main_checkpoint_period_zero(tmp):
  return ("main (smoke.gin)", _smoke(tmp, f"MODEL_DIR = '{tmp / 'run'}'", "CHECKPOINT_PERIOD = 0"),
          "error: CheckpointConfig.period must be a positive integer, found 0",
          [tmp / "run"])  # Nothing: not config.gin, encoder.json or vocabulary/ either.


def main_unwritable_model_dir(tmp):
  model_dir = a_file(tmp) / "run"
  return ("main (smoke.gin)", _smoke(tmp, f"MODEL_DIR = '{model_dir}'"),
          f"error: MODEL_DIR (trainer.train.model_dir): cannot write to {model_dir}: "
          f"{tmp / 'a_file'} is a file, not a folder", [tmp / "vocab"])


def main_unwritable_spm_prefix(tmp):
  prefix = a_file(tmp) / "spm"
  return ("main (smoke.gin)", gin_run(["gin_configs/runs/smoke.gin"], [
      f"MODEL_DIR = '{tmp / 'run'}'", f"SPM_PREFIX = '{prefix}'"]),
      f"error: SPM_PREFIX (spm.train.output): cannot write to {prefix}: {tmp / 'a_file'} is a "
      "file, not a folder", [tmp / "run"])


def main_unwritable_eval_dir(tmp):
  (tmp / "encoder").mkdir()
  eval_dir = a_file(tmp) / "eval"
  return ("main (eval.gin)", gin_run(["gin_configs/runs/eval.gin"], [
      f"ENCODER_PATH = '{tmp / 'encoder'}'", f"EVAL_DIR = '{eval_dir}'",
      f"SPM_PATH = '{tmp / 'spm.model'}'"]),
      f"error: EVAL_DIR (eval_run.run_evaluation.output_dir): cannot write to {eval_dir}: "
      f"{tmp / 'a_file'} is a file, not a folder", [])


def main_eval_duplicate_question_id(tmp):
  (tmp / "encoder").mkdir()
  path = squad(tmp / "data" / "xquad-r" / "en.json", ["q1", "q1"])
  return ("main (eval.gin)", gin_run(["gin_configs/runs/eval.gin"], [
      f"ENCODER_PATH = '{tmp / 'encoder'}'", f"EVAL_DIR = '{tmp / 'eval'}'",
      f"SPM_PATH = '{tmp / 'spm.model'}'", f"DATA_DIR = '{tmp / 'data'}'",
      "EVAL_LANGUAGES = ['en']", "IN_DOMAIN_SPLIT = None"]),
      f"error: {path}: record id 'q1': duplicate id", [tmp / "eval"])


def miracl_duplicate_question_id(tmp):
  topics = tmp / "topics.tsv"
  topics.write_text("1\tWhy?\n1\tWhy again?\n")
  qrels, corpus = tmp / "qrels.trec", jsonl(tmp / "corpus.jsonl", {
      "docid": "d1", "title": "T", "text": "Because."})
  qrels.write_text("1 Q0 d1 1\n")
  return ("MIRACL loader", absl_cli(lambda: _one_line(
      lambda: retrieval_data.load_miracl(topics, qrels, corpus, "en"))),
      f"error: {topics}: line 2: duplicate qid '1'", [])


def gather_missing_runs_root(tmp):
  return ("study_gather", absl_cli(lambda: _one_line(
      lambda: study_gather.gather(str(tmp / "runs"), str(tmp / "report")))),
      f"error: --runs_root {tmp / 'runs'}: no such folder", [tmp / "report"])


@functools.cache
def _exported() -> tuple[pathlib.Path, pathlib.Path]:
  """(a tiny mT5 artifact, another vocabulary of the same size), made once per process."""
  from tests import test_export  # pylint: disable=g-import-not-at-top  # Heavy; only here.
  folder = pathlib.Path(tempfile.mkdtemp(prefix="malformed-inputs-"))
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  texts = reference_models.xquad_texts(shared_data_dir())
  vocabulary = families.train_vocabulary("t5", texts, str(folder / "a"), 300)
  other = families.train_vocabulary("t5", texts[::-1][:len(texts) // 2], str(folder / "b"), 300)
  model = dual_encoder.DualEncoder(test_export.CONFIGS["t5"])
  artifacts.export_encoder(str(folder / "artifact"), model, test_export.random_params(model),
                           vocabulary)
  return folder / "artifact", pathlib.Path(other)


def _artifact_copy(tmp) -> pathlib.Path:
  artifact = tmp / "artifact"
  shutil.copytree(_exported()[0], artifact)
  return artifact


def _load(artifact) -> Callable:
  return absl_cli(lambda: _one_line(lambda: exporter.load_encoder(str(artifact))))


def _sha(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:12]


def load_encoder_swapped_vocabulary(tmp):
  artifact = _artifact_copy(tmp)
  vocabulary = artifact / artifacts.SPM_FILE
  expected = _sha(vocabulary)
  shutil.copy(_exported()[1], vocabulary)
  return ("load_encoder", _load(artifact),
          f"error: {vocabulary}: sha256 {_sha(vocabulary)}... differs from the manifest's "
          f"{expected}... of {artifact}: not the vocabulary the encoder was trained with", [])


def load_encoder_missing_params(tmp):
  artifact = _artifact_copy(tmp)
  shutil.rmtree(artifact / artifacts.PARAMS_DIR)
  return ("load_encoder", _load(artifact),
          f"error: {artifact / artifacts.PARAMS_DIR}: missing (the artifact's parameters)", [])


def load_encoder_flipped_params(tmp):
  artifact = _artifact_copy(tmp)
  victim = max((p for p in (artifact / artifacts.PARAMS_DIR).rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
  recorded = _sha(victim)
  flip_bytes(victim, victim.stat().st_size // 2)
  return ("load_encoder", _load(artifact),
          f"error: {victim}: sha256 {_sha(victim)}... differs from the recorded {recorded}... (the "
          f"params_sha256 of {artifact / artifacts.MANIFEST}): the artifact's parameters are "
          "damaged; export it again", [])


def load_encoder_manifest_without_config(tmp):
  artifact = _artifact_copy(tmp)
  manifest = json.loads((artifact / artifacts.MANIFEST).read_text())
  del manifest["encoder_config"], manifest["vocabulary"]["sha256"]
  (artifact / artifacts.MANIFEST).write_text(json.dumps(manifest))
  return ("load_encoder", _load(artifact),
          f"error: {artifact / artifacts.MANIFEST}: missing encoder_config, vocabulary.sha256", [])


def load_encoder_other_dims(tmp):
  artifact = _artifact_copy(tmp)
  manifest = json.loads((artifact / artifacts.MANIFEST).read_text())
  manifest["encoder_config"]["num_heads"] = 2
  (artifact / artifacts.MANIFEST).write_text(json.dumps(manifest))
  params = artifact / artifacts.PARAMS_DIR
  return ("load_encoder", _load(artifact),
          f"error: {params}: does not fit the manifest's model (9 problems): shape mismatch "
          "encoder/layers_0/attention/key/kernel: checkpoint (16, 24), model (16, 16); shape "
          "mismatch encoder/layers_0/attention/out/kernel: checkpoint (24, 16), model (16, 16); "
          "shape mismatch encoder/layers_0/attention/query/kernel: checkpoint (16, 24), model "
          "(16, 16); ...", [])


def _one_line(fn):
  with gin_run_lib.one_line_errors():
    fn()


CASES = [
    Case("data_stats_missing_language_file", "LAReQA folder without a requested language's file",
         data_stats_missing_language_file),
    Case("data_stats_truncated_file", "LAReQA file cut after 50 bytes", data_stats_truncated_file),
    Case("data_stats_duplicate_question_id", "LAReQA file with a question id twice",
         data_stats_duplicate_question_id),
    Case("data_stats_unknown_language", "unknown language code", data_stats_unknown_language),
    Case("data_batches_bad_json_line", "corpus JSONL with a truncated line",
         data_batches_bad_json_line),
    Case("data_batches_not_utf8", "corpus JSONL with a Latin-1 byte on line 2",
         data_batches_not_utf8),
    Case("data_batches_duplicate_id", "corpus with a pair id twice in one language",
         data_batches_duplicate_id),
    Case("data_batches_empty_corpus", "empty corpus folder", data_batches_empty_corpus),
    Case("data_batches_missing_corpus", "corpus path that does not exist",
         data_batches_missing_corpus),
    Case("data_batches_wrong_language_code", "record with language 'english'",
         data_batches_wrong_language_code),
    Case("data_batches_missing_field", "record without its question", data_batches_missing_field),
    Case("spm_unwritable_output", "vocabulary --output beneath a file", spm_unwritable_output),
    Case("spm_missing_corpus", "vocabulary corpus that does not exist", spm_missing_corpus),
    Case("translate_missing_model", "translation model folder that does not exist",
         translate_missing_model),
    Case("translate_unwritable_output", "translation --output beneath a file",
         translate_unwritable_output),
    Case("translate_wrong_language_code", "target language 'deutsch'",
         translate_wrong_language_code),
    Case("evaluate_bad_run_line", "TREC run line with 4 fields", evaluate_bad_run_line),
    Case("evaluate_missing_qrels", "qrels file that does not exist", evaluate_missing_qrels),
    Case("evaluate_gzip_shard_not_utf8", "BEIR corpus .jsonl.gz shard whose line 3 is not UTF-8",
         evaluate_gzip_shard_not_utf8),
    Case("evaluate_missing_corpus", "BEIR --corpus file that does not exist",
         evaluate_missing_corpus),
    Case("beir_document_without_text", "BEIR corpus record without text", beir_case(
        "{corpus}: line 2 (_id 'd2'): missing field 'text'",
        corpus=({"_id": "d1", "text": "Because."}, {"_id": "d2", "title": "Sky"}))),
    Case("beir_query_without_text", "BEIR query without text", beir_case(
        "{queries}: line 1 (_id 'q1'): missing field 'text'",
        queries=({"_id": "q1", "query": "Why?"},))),
    Case("beir_query_with_empty_text", "BEIR query whose text is blank", beir_case(
        "{queries}: line 2 (_id 'q2'): field 'text' is empty",
        queries=({"_id": "q1", "text": "Why?"}, {"_id": "q2", "text": " "}))),
    Case("beir_record_without_id", "BEIR corpus record without _id", beir_case(
        "{corpus}: line 2: missing field '_id'",
        corpus=({"_id": "d1", "text": "Because."}, {"id": "d2", "text": "Blue."}))),
    Case("beir_duplicate_id", "BEIR corpus with a document id twice", beir_case(
        "{corpus}: line 2 (_id 'd1'): duplicate _id (first at {corpus}: line 1 (_id 'd1'))",
        corpus=({"_id": "d1", "text": "Because."}, {"_id": "d1", "text": "Blue."}))),
    Case("beir_empty_queries", "empty BEIR queries file",
         beir_case("{queries}: " + _EMPTY, queries=())),
    Case("beir_empty_corpus", "empty BEIR corpus file",
         beir_case("{corpus}: " + _EMPTY, corpus=())),
    Case("beir_qrels_of_an_unknown_query", "BEIR qrels judging a query the queries file lacks",
         beir_case("{qrels}: line 2: query-id 'q9' is not in {queries}",
                   qrels="query-id\tcorpus-id\tscore\nq9\td1\t1\n")),
    Case("main_misspelled_macro", "gin binding of an undeclared macro", main_misspelled_macro),
    Case("main_unknown_parameter", "gin binding of an unknown parameter",
         main_unknown_parameter),
    Case("main_missing_gin_file", "--gin_file that does not exist", main_missing_gin_file),
    Case("main_missing_include", "gin file including a file that does not exist",
         main_missing_include),
    Case("main_unquoted_string", "gin string without gin's quotes (--gin.MODEL_DIR=/tmp/x)",
         main_unquoted_string),
    Case("main_required_setting_unbound", "export without MODEL_DIR",
         main_required_setting_unbound),
    Case("main_export_without_a_run", "export of a MODEL_DIR that does not exist",
         main_export_without_a_run),
    Case("main_export_of_a_folder_without_a_run", "export of a folder no training run wrote",
         main_export_of_a_folder_without_a_run),
    Case("main_missing_corpus", "training CORPUS_DIR that does not exist", main_missing_corpus),
    Case("main_misspelled_flag", "misspelled flag (--gin_fil)", main_misspelled_flag),
    Case("main_checkpoint_period_zero", "CHECKPOINT_PERIOD = 0", main_checkpoint_period_zero),
    Case("main_unwritable_model_dir", "MODEL_DIR beneath a file", main_unwritable_model_dir),
    Case("main_unwritable_spm_prefix", "SPM_PREFIX (vocabulary output) beneath a file",
         main_unwritable_spm_prefix),
    Case("main_unwritable_eval_dir", "EVAL_DIR beneath a file", main_unwritable_eval_dir),
    Case("main_eval_duplicate_question_id", "evaluation data with a question id twice",
         main_eval_duplicate_question_id),
    Case("miracl_duplicate_question_id", "MIRACL topics with a qid twice",
         miracl_duplicate_question_id),
    Case("load_encoder_swapped_vocabulary", "exported artifact with another sentencepiece.model",
         load_encoder_swapped_vocabulary),
    Case("load_encoder_missing_params", "exported artifact without params/",
         load_encoder_missing_params),
    Case("load_encoder_flipped_params",
         "exported artifact with 16 bytes flipped in a parameter file",
         load_encoder_flipped_params),
    Case("load_encoder_manifest_without_config", "manifest without encoder_config and the "
         "vocabulary's sha256", load_encoder_manifest_without_config),
    Case("load_encoder_other_dims", "manifest's num_heads changed (3 to 2)",
         load_encoder_other_dims),
    Case("gather_missing_runs_root", "study runs folder that does not exist",
         gather_missing_runs_root),
    Case("hf_export_missing_encoder", "hf_export --encoder that does not exist",
         hf_export_missing_encoder),
]


def run_case(case: Case, tmp: pathlib.Path) -> dict:
  """Runs one case in `tmp` (from the repository root, as the commands run)."""
  previous = os.getcwd()
  os.chdir(REPO_ROOT)
  try:
    command, run, expected, outputs = case.make(tmp)
    status, stdout, stderr = run()
  finally:
    os.chdir(previous)
  lines = stderr.strip().splitlines()
  return {"command": command, "status": status, "stdout": stdout, "stderr": stderr,
          "line": lines[-1] if lines else "", "expected": expected,
          "left": [str(p) for p in outputs if os.path.exists(p)]}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_with_one_exact_line_and_no_output(case, tmp_path):
  result = run_case(case, tmp_path)
  assert result["line"] == result["expected"], result["stderr"][-2000:]
  assert result["status"] == 1 and "Traceback" not in result["stderr"]
  assert result["stdout"] == "" and result["left"] == []


@pytest.mark.slow
def test_main_process_with_an_unwritable_model_dir_exits_1_with_the_line_only(tmp_path):
  """The real process, once: what the in-process cases above stand for."""
  (tmp_path / "a_file").write_text("x")
  model_dir = tmp_path / "a_file" / "run"
  result = subprocess.run(
      [sys.executable, "-m", "hybridir.main", "--gin_file=gin_configs/runs/smoke.gin",
       f"--gin.MODEL_DIR='{model_dir}'", f"--gin.SPM_PREFIX='{tmp_path / 'vocab' / 'spm'}'"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: MODEL_DIR (trainer.train.model_dir): cannot write to {model_dir}: "
      f"{tmp_path / 'a_file'} is a file, not a folder")
  assert os.listdir(tmp_path) == ["a_file"]


def test_beir_files_are_checked_before_tensorflow_loads(tmp_path):
  """The real process: a bad BEIR record ends `evaluate --encoder` before the encoder's imports."""
  (corpus, queries, qrels), _ = _beir(tmp_path, corpus=({"_id": "d1", "title": "Sky"},))
  result = subprocess.run(
      [sys.executable, "-X", "importtime", "-m", "hybridir.evaluate", "--encoder",
       str(tmp_path / "encoder"), "--corpus", str(corpus), "--queries", str(queries), "--qrels",
       str(qrels), "--output_dir", str(tmp_path / "eval")],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and own_lines(result.stderr) == [
      f"error: {corpus}: line 1 (_id 'd1'): missing field 'text'"]
  assert "tensorflow" not in heavy_imports(result.stderr)
  assert not (tmp_path / "eval").exists()


def test_queries_without_a_judgement_are_not_scored_and_named_in_a_note(tmp_path):
  queries = ({"_id": "q1", "text": "Why is the sky blue?"}, {"_id": "q2", "text": "Why?"},
             {"_id": "q3", "text": "How?"})
  (_, queries_path, _), run = _beir(tmp_path, queries=queries)
  (tmp_path / "encoder").rmdir()
  shutil.copytree(_exported()[0], tmp_path / "encoder")
  status, stdout, stderr = run()
  assert status == 0, stderr
  assert stderr.splitlines()[0] == (
      f"note: 2 of 3 queries have no judgement in {tmp_path / 'qrels.tsv'} and are not scored "
      f"(the first: {queries_path}: line 2 (_id 'q2'))")
  assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["all"]["num_q"] == 1


def markdown_table() -> str:
  """Runs every case; a markdown row per input with its command and error line ($TMP: its
  scratch folder; $REPO: the checkout)."""
  rows = ["| input tried | command | status | error line (last line of stderr) | no output left |",
          "|---|---|---|---|---|"]
  for case in CASES:
    with tempfile.TemporaryDirectory() as scratch:
      tmp = pathlib.Path(scratch)
      result = run_case(case, tmp)
    line = result["line"].replace(str(tmp), "$TMP").replace(str(REPO_ROOT), "$REPO")
    line = line.replace("|", "\\|")
    ok = "yes" if not result["left"] and not result["stdout"] else "NO"
    match = "" if result["line"] == result["expected"] else " (UNEXPECTED)"
    rows.append(f"| {case.tried} | {result['command']} | {result['status']} | `{line}`{match} "
                f"| {ok} |")
  return "\n".join(rows)


if __name__ == "__main__":
  print(markdown_table())
