"""Tiny mT5 and XLM-R dual encoders trained on XQuAD-R hybrid batches: the loss falls clearly."""
import numpy as np
import pytest

import tasks
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir.data import spm
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.models import xlmr
from hybridir.training import optim
from hybridir.training import partitioning
from hybridir.training import train_step
from hybridir.training import trainer

# Two SentencePiece models and dozens of training steps per model.
pytestmark = pytest.mark.slow

LANGUAGES = ["en", "de", "zh"]
LENGTHS = {"query": 24, "passage": 48}


@pytest.fixture(scope="module")
def registered(tmp_path_factory, data_dir):
  folder = tmp_path_factory.mktemp("vocab")
  out = {}
  for family in ("t5", "xlmr"):
    spm_path = spm.train(str(data_dir / "xquad-r"), family, 3000, str(folder / family),
                         languages=LANGUAGES)
    name = f"train_hybrid_{family}"
    tasks.register_parallel_qa(name, str(data_dir / "xquad-r"), family, spm_path,
                               languages=LANGUAGES)
    out[family] = (f"{name}_hybrid", spm_path)
  return out


def encoder_config(family, vocab_size):
  common = dict(vocab_size=vocab_size, emb_dim=32, num_layers=2, num_heads=4, head_dim=8,
                mlp_dim=64, dropout_rate=0.0)
  return t5.T5Config(**common) if family == "t5" else xlmr.XLMRConfig(**common)


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_loss_falls_clearly_within_a_few_dozen_hybrid_steps(tmp_path, registered, family):
  mixture, _ = registered[family]
  train_input = input_pipeline.HybridInput(mixture, LENGTHS,
                                           hybrid.HybridSchedule(batch_size=16, alpha=0.5))
  kinds = {train_input.batch_spec(step).kind for step in range(30)}
  assert kinds == {"mono", "cross"}
  model = dual_encoder.DualEncoder(encoder_config(family, train_input.vocabulary.vocab_size))
  # XLM-R starts slowly from scratch: its BERT-style init adds one shared token-type vector to
  # every token, so all mean-pooled texts begin nearly parallel (cosine ~0.95 against ~0.2 for T5).
  steps, learning_rate = (30, 3e-3) if family == "t5" else (120, 1e-3)
  result = trainer.train(
      model=model, train_input=train_input, task_feature_lengths=LENGTHS, train_steps=steps,
      model_dir=str(tmp_path), learning_rate_schedule=learning_rate,
      optimizer_fn=lambda learning_rate_schedule: optim.create_optimizer(
          "adamw", learning_rate_schedule),
      loss_config=train_step.LossConfig(temperature=0.05), mesh=partitioning.create_mesh(1),
      checkpoint_cfg=trainer.CheckpointConfig(period=100), log_period=100)
  losses = [h["loss"] for h in result.history]
  window = steps // 6
  assert np.mean(losses[-window:]) < 0.8 * np.mean(losses[:window]), losses
