"""Checkpoint import: the real T5X tiny checkpoint, and clear errors for checkpoints that don't fit."""
import gzip
import json
import os

import flax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hybridir.models import t5
from hybridir.training import importers
from tests import reference_models as ref

T5X_DIR = "t5x-tiny-checkpoint/test_de_t5_tiny.checkpoint_1000"


def read_zarr_v2(folder) -> np.ndarray:
  """An independent reader of the checkpoint's gzip zarr v2 arrays (no tensorstore)."""
  with open(os.path.join(folder, ".zarray")) as f:
    meta = json.load(f)
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C"
  out = np.zeros(meta["shape"], np.dtype(meta["dtype"]))
  chunks = meta["chunks"]
  for name in os.listdir(folder):
    if name.startswith("."):
      continue
    index = [int(i) for i in name.split(".")]
    with open(os.path.join(folder, name), "rb") as f:
      block = np.frombuffer(gzip.decompress(f.read()), np.dtype(meta["dtype"])).reshape(chunks)
    slices = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, meta["shape"]))
    out[slices] = block[tuple(slice(0, s.stop - s.start) for s in slices)]
  return out


def reference_t5x_target(ckpt_dir) -> dict[str, np.ndarray]:
  """The checkpoint's target parameters, decoded with msgpack and the zarr reader above."""
  def decode_ext(code, data):
    shape, dtype, buffer = msgpack.unpackb(data)
    return np.frombuffer(buffer, np.dtype(dtype)).reshape(shape)
  with open(os.path.join(ckpt_dir, "checkpoint"), "rb") as f:
    tree = msgpack.unpackb(f.read(), ext_hook=decode_ext, strict_map_key=False)
  out = {}
  for keys, leaf in flax.traverse_util.flatten_dict(
      tree["optimizer"]["target"], is_leaf=lambda _, x: isinstance(x, dict) and "driver" in x).items():
    if isinstance(leaf, dict):
      leaf = read_zarr_v2(os.path.join(ckpt_dir, leaf["kvstore"]["path"]))
    out["/".join(keys)] = leaf
  return out


def test_t5x_tiny_checkpoint_loads_every_tensor_with_its_values(data_dir):
  ckpt = data_dir / T5X_DIR
  model, params = importers.load_t5x(str(ckpt))
  loaded = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}
  expected = reference_t5x_target(ckpt)
  assert len(expected) == 20 and len(loaded) == len(expected)
  for name, value in expected.items():
    ours = name if not name.startswith("token_embedder") else "encoder/" + name
    np.testing.assert_array_equal(loaded[ours], value, err_msg=name)


def test_t5x_tiny_checkpoint_config_is_inferred_as_t5_1_0(data_dir):
  model, _ = importers.load_t5x(str(data_dir / T5X_DIR))
  cfg = model.encoder_config
  assert (cfg.vocab_size, cfg.emb_dim, cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
          cfg.mlp_activations) == (32128, 4, 2, 2, 2, 8, ("relu",))
  assert model.projection_dim == 768


@pytest.mark.slow
def test_t5x_dual_encoder_gives_finite_unit_embeddings(data_dir):
  model, params = importers.load_t5x(str(data_dir / T5X_DIR))
  tokens = jnp.array([[37, 1566, 19, 1, 0, 0], [8, 1, 0, 0, 0, 0]])
  embeddings = np.asarray(model.apply({"params": params}, tokens, method="encode"))
  assert embeddings.shape == (2, 768) and np.isfinite(embeddings).all()
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)


def test_t5x_config_mismatch_names_every_parameter_and_both_shapes(data_dir):
  wrong = t5.T5Config(vocab_size=32128, emb_dim=4, num_layers=2, num_heads=2, head_dim=2,
                      mlp_dim=16, mlp_activations=("relu",), relative_attention_num_buckets=4)
  with pytest.raises(importers.CheckpointMismatchError) as error:
    importers.load_t5x(str(data_dir / T5X_DIR), wrong)
  message = str(error.value)
  for layer in (0, 1):
    assert f"encoder/layers_{layer}/mlp/wi/kernel: checkpoint (4, 8), model (4, 16)" in message
    assert f"encoder/layers_{layer}/mlp/wo/kernel: checkpoint (8, 4), model (16, 4)" in message
  assert "4 problems" in message


def test_t5x_missing_checkpoint_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no T5X `checkpoint` file"):
    importers.open_t5x_checkpoint(str(tmp_path))


def test_hf_checkpoint_lists_unknown_and_missing_tensors(tmp_path):
  ref.save_random_mt5(tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = load_file(path)
  tensors["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.zeros((2, 2), np.float32)
  del tensors["encoder.final_layer_norm.weight"]
  save_file(tensors, path)
  with pytest.raises(importers.CheckpointMismatchError) as error:
    importers.load_hf(str(tmp_path))
  message = str(error.value)
  assert "unknown tensor: encoder.block.0.layer.0.SelfAttention.extra.weight" in message
  assert "missing in checkpoint: encoder/encoder_norm/scale (16,)" in message


def test_hf_config_that_disagrees_with_weights_names_every_parameter(tmp_path):
  ref.save_random_xlmr(tmp_path)
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  config["intermediate_size"] = 48
  with open(tmp_path / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(importers.CheckpointMismatchError) as error:
    importers.load_hf(str(tmp_path))
  message = str(error.value)
  for layer in (0, 1):
    assert f"encoder/layers_{layer}/wi/kernel: checkpoint (24, 40), model (24, 48)" in message
    assert f"encoder/layers_{layer}/wo/kernel: checkpoint (40, 24), model (48, 24)" in message


def test_hf_unsupported_model_type_names_config_file(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match=r"config.json: unsupported model_type 'gpt2'"):
    importers.load_hf(str(tmp_path))


def test_hf_pytorch_bin_checkpoint_loads_like_safetensors(tmp_path):
  torch_model = ref.save_random_mt5(tmp_path / "st")
  torch_model.save_pretrained(tmp_path / "bin", safe_serialization=False)
  if not os.path.exists(tmp_path / "bin" / "pytorch_model.bin"):
    import torch  # transformers 5 may always write safetensors: write the .bin ourselves.
    for f in os.listdir(tmp_path / "bin"):
      if f.endswith(".safetensors"):
        os.remove(tmp_path / "bin" / f)
    torch.save(torch_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  _, from_st = importers.load_hf(str(tmp_path / "st"))
  _, from_bin = importers.load_hf(str(tmp_path / "bin"))
  for a, b in zip(flax.traverse_util.flatten_dict(from_st).values(),
                  flax.traverse_util.flatten_dict(from_bin).values()):
    np.testing.assert_array_equal(a, b)
