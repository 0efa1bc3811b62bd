"""Faults met through the real command lines, as a user runs them: each ends the process with one
`error:` line (no traceback), status 1, and leaves on disk what was there (a good checkpoint is
never lost). A full disk is stood in for by RLIMIT_FSIZE (writes past it fail with EFBIG, as past
a full disk with ENOSPC), which needs no root; bench/faults.py fills a real tmpfs."""
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest

from hybridir.export import artifacts
from hybridir.models import families
from hybridir.training import checkpoints
from tests import reference_models
from tests.conftest import REPO_ROOT
from tests.test_faults import flip_bytes
from tests.test_malformed_inputs import _exported

SMOKE = ("--gin_file=gin_configs/runs/smoke.gin", "--gin.WARMUP_STEPS=0",
         "--gin.CHECKPOINT_PERIOD=1")


def command(module, *args, file_size_limit=None, timeout=300):
  """`python -m module args` on 8 CPU devices: (status, stderr); writes past `file_size_limit`
  bytes fail as on a full disk."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  limit = None if file_size_limit is None else lambda: resource.setrlimit(
      resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
  result = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
  return result.returncode, result.stderr


def error_line(stderr) -> str:
  """The one `error:` line of stderr (the test fails on a traceback or a second one)."""
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory, data_dir):
  """A 300-piece SentencePiece model (~240 KB: larger than the file size limits below)."""
  texts = reference_models.xquad_texts(data_dir)
  return families.train_vocabulary("t5", texts, str(tmp_path_factory.mktemp("spm") / "spm"), 300)


def smoke(model_dir, vocabulary, *bindings, **options):
  return command("hybridir.main", *SMOKE, f"--gin.MODEL_DIR='{model_dir}'",
                 f"--gin.SPM_PATH='{vocabulary}'", *bindings, **options)


@pytest.mark.slow
def test_full_disk_at_setup_ends_in_one_line_naming_the_file_and_leaves_nothing(
    tmp_path, vocabulary):
  model_dir = tmp_path / "run"
  status, stderr = smoke(model_dir, vocabulary, file_size_limit=64 << 10)
  copy = model_dir / "vocabulary" / "sentencepiece.model"
  assert (status, error_line(stderr)) == (1, f"error: [Errno 27] File too large: '{copy}'")
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_indivisible_batch_is_refused_in_one_line_before_anything_is_written(tmp_path,
                                                                            vocabulary):
  status, stderr = smoke(tmp_path / "run", vocabulary, "--gin.BATCH_SIZE=12")
  assert (status, error_line(stderr)) == (1, (
      "error: BATCH_SIZE=12 does not split evenly: it must be a multiple of 8 (mesh {'data': 8, "
      "'model': 1}: 8 data-parallel devices, 1 hosts, LossConfig.grad_cache_chunks=1)"))
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_corpus_registered_for_another_family_than_the_models_is_refused_in_one_line(
    tmp_path, vocabulary):
  """FAMILY is the model file's (here xlmr_tiny.gin's, after smoke.gin's mT5); a binding that
  contradicts it registers the corpus for T5, and the trainer refuses the pair before writing."""
  status, stderr = smoke(tmp_path / "run", vocabulary,
                         "--gin_file=gin_configs/models/xlmr_tiny.gin", "--gin.FAMILY='t5'")
  assert (status, error_line(stderr)) == (1, (
      "error: the input 'xquad_r_hybrid' was registered for family 't5', MODEL is of family "
      "'xlmr' (FAMILY is the model file's: a binding of it, or of a registration's family, must "
      "agree)"))
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_failed_save_and_unverifiable_checkpoint_each_end_in_one_line_keeping_the_checkpoint(
    tmp_path, vocabulary):
  """One run (step 1 saved), then two faults on it: its rerun on a full disk fails step 2's save,
  naming step 1, after a setup that rewrote nothing (the vocabulary copy is over the limit); then
  step 1 loses its checksums.json and is refused rather than resumed unverified."""
  model_dir = tmp_path / "run"
  status, stderr = smoke(model_dir, vocabulary, "--gin.TRAIN_STEPS=1")
  assert status == 0, stderr[-3000:]
  step_1 = model_dir / "checkpoints" / "1"
  described = {name: (model_dir / name).read_bytes()
               for name in ("config.gin", "encoder.json", "vocabulary/sentencepiece.model")}

  status, stderr = smoke(model_dir, vocabulary, "--gin.TRAIN_STEPS=2", file_size_limit=128 << 10)
  line = error_line(stderr)
  assert status == 1 and line.startswith(
      f"error: saving checkpoint step 2 under {model_dir / 'checkpoints'} failed: "), line
  assert "File too large" in line and line.endswith(
      f"training stopped. Newest good checkpoint: {step_1}"), line
  assert checkpoints.verify(step_1) is None
  assert {name: (model_dir / name).read_bytes() for name in described} == described

  os.remove(step_1 / checkpoints.CHECKSUMS)
  status, stderr = smoke(model_dir, vocabulary, "--gin.TRAIN_STEPS=2")
  assert (status, error_line(stderr)) == (1, (
      f"error: {model_dir / 'checkpoints'}: none of the checkpoints [1] verifies and restores (see "
      "the warnings above); they are left as they were: move them away to start afresh"))
  assert f"{step_1 / checkpoints.CHECKSUMS}: missing" in stderr
  assert "ALLOW_UNVERIFIED_CHECKPOINTS = True" in stderr
  # Step 1 is kept; the failed save's half-written step 2 may or may not be gone yet (orbax
  # removes such directories in the background when a manager starts).
  kept = [name for name in os.listdir(model_dir / "checkpoints")
          if "orbax-checkpoint-tmp" not in name]
  assert kept == ["1"]


def beir_files(folder, corpus_name="corpus.jsonl", corpus_bytes=None):
  """A two-document BEIR corpus (or `corpus_bytes` as its corpus file), one query, one qrel."""
  folder.mkdir(parents=True, exist_ok=True)
  corpus = folder / corpus_name
  corpus.write_bytes(corpus_bytes or b"".join(json.dumps(
      {"_id": docid, "text": text}).encode() + b"\n" for docid, text in (
          ("d1", "The sky is blue."), ("d2", "Grass is green."))))
  (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "What colour?"}) + "\n")
  (folder / "qrels.tsv").write_text("q1\td1\t1\n")
  return ["--corpus", corpus, "--queries", folder / "queries.jsonl", "--qrels",
          folder / "qrels.tsv"]


@pytest.mark.slow
def test_export_with_flipped_parameter_bytes_is_refused_by_evaluate_naming_the_file(tmp_path):
  artifact = tmp_path / "artifact"
  shutil.copytree(_exported()[0], artifact)
  victim = max((p for p in (artifact / artifacts.PARAMS_DIR).rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
  flip_bytes(victim, victim.stat().st_size // 2)
  status, stderr = command("hybridir.evaluation.evaluate", "--encoder", artifact, "--output_dir",
                           tmp_path / "eval", *beir_files(tmp_path / "beir"))
  line = error_line(stderr)
  assert status == 1 and line.startswith(f"error: {victim}: sha256 ") and line.endswith(
      f"(the params_sha256 of {artifact / artifacts.MANIFEST}): the artifact's parameters are "
      "damaged; export it again"), line
  assert not (tmp_path / "eval").exists()
