"""The README's chain, smoke run -> export -> BEIR files -> evaluation -> Hugging Face folder, run
as written (only /tmp/hybridir_smoke becomes a temporary folder) from a user's environment: quiet
logs (no line of CUDA, TPU probing, libtpu or orbax), closing lines that name the next command, a
self-describing MODEL_DIR, metrics that pytrec_eval confirms."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import pytrec_eval

from hybridir.evaluation import trec
from hybridir.export import artifacts
from hybridir.export import exporter
from hybridir.models import dual_encoder
from hybridir.models import t5
from tests import test_quiet
from tests.conftest import REPO_ROOT

# The README's four commands, each a process.
pytestmark = pytest.mark.slow

README_PATH = "/tmp/hybridir_smoke"


def readme_commands() -> list[list[str]]:
  readme = (REPO_ROOT / "README.md").read_text()
  block = re.search(r"<!-- readme-chain:begin -->\n```bash\n(.*?)```\n<!-- readme-chain:end -->",
                    readme, re.S)
  assert block, "README.md has no readme-chain block"
  return [shlex.split(line) for line in block.group(1).strip().splitlines()]


def run(command: list[str], model_dir: str) -> subprocess.CompletedProcess:
  """The command as a user's shell runs it (test_quiet.user_env: the command picks jax's platform
  and quiets TensorFlow itself); it succeeds without a line of another library."""
  assert command[0] == ".venv/bin/python"
  command = [sys.executable] + [arg.replace(README_PATH, model_dir) for arg in command[1:]]
  env = test_quiet.user_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert test_quiet.library_lines(result.stderr) == [], result.stderr[-3000:]
  return result


def closing_next_command(stderr: str) -> str:
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("wrote ") and "; next: " in last, last
  return last.split("; next: ", 1)[1]


@pytest.mark.slow
def test_readme_chain_runs_as_written_with_quiet_logs_and_closing_lines(tmp_path, data_dir):
  model_dir = str(tmp_path / "smoke")
  smoke, export_command, beir, evaluation, hugging_face = readme_commands()

  result = run(smoke, model_dir)
  lines = result.stdout.splitlines() + result.stderr.splitlines()
  assert len(lines) < 40, "\n".join(lines)
  assert "step 40/40" in result.stderr and "eta" in result.stderr
  # The closing line's next command is the README's next one.
  assert shlex.split(closing_next_command(result.stderr)) == [
      "python", *(arg.replace(README_PATH, model_dir) for arg in export_command[1:])]
  assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.gin", "encoder.json", "train",
                                           "vocabulary"]
  assert "MODEL_DIR = " in (tmp_path / "smoke" / "config.gin").read_text()

  result = run(export_command, model_dir)
  assert "python -m hybridir.evaluate --encoder" in closing_next_command(result.stderr)
  manifest = artifacts.read_manifest(f"{model_dir}/export")
  assert manifest["max_length"] == 64 and manifest["text_format"]["query_prefix"] == "Query: "

  run(beir, model_dir)
  result = run(evaluation, model_dir)
  assert "encoding" in result.stderr  # Progress.
  folder = tmp_path / "smoke" / "eval_mlqa_r"
  measured = json.loads((folder / "metrics.json").read_text())
  assert measured["all"]["num_q"] == 1660 and measured["corpus_size"] == 2362 + 6264
  assert measured["rank_distance"]["num_q"] > 0
  assert "| map |" in (folder / "report.md").read_text()
  # pytrec_eval on the written run and the BEIR qrels agrees (a run holds each query's top 100).
  qrels = {}
  for line in (tmp_path / "smoke" / "mlqa_r_en_de" / "qrels.tsv").read_text().splitlines()[1:]:
    qid, docid, score = line.split("\t")
    qrels.setdefault(qid, {})[docid] = int(score)
  trec_run = trec.read_run(str(folder / "run.trec"))
  per_query = pytrec_eval.RelevanceEvaluator(qrels, {"recall.100", "ndcg_cut.10"}).evaluate(
      trec_run)
  for ours, theirs in (("recall_100", "recall_100"), ("ndcg_cut_10", "ndcg_cut_10")):
    expected = sum(q[theirs] for q in per_query.values()) / len(per_query)
    assert measured["all"][ours] == pytest.approx(expected, abs=1e-6)

  result = run(hugging_face, model_dir)
  assert "SentenceTransformer(" in closing_next_command(result.stderr)
  folder = tmp_path / "smoke" / "hf"
  assert json.loads((folder / "config.json").read_text())["model_type"] == "mt5"
  assert (folder / "model.safetensors").stat().st_size > 0
  assert f"`{model_dir}`" in (folder / "README.md").read_text()  # The card names the run.

  # A model file that contradicts the run is refused, naming what differs.
  small = dual_encoder.DualEncoder(t5.T5Config(vocab_size=3000))  # mT5-small's sizes.
  with pytest.raises(ValueError, match=r"trained with another model.*emb_dim=512"):
    exporter.run_model_and_vocabulary(model_dir, small, None)
