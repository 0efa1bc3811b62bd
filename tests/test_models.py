"""Model configs, logical axis names, dtypes and the dual-encoder head."""
import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hybridir import gin_utils
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.models import xlmr
from hybridir.training import importers

# Published sizes: mT5 (Xue et al. 2021, HF google/mt5-*), XLM-R (Conneau et al. 2020).
PUBLISHED = {
    "mt5_small": dict(model_type="mt5", d_model=512, num_layers=8, num_heads=6, d_kv=64, d_ff=1024),
    "mt5_base": dict(model_type="mt5", d_model=768, num_layers=12, num_heads=12, d_kv=64, d_ff=2048),
    "mt5_large": dict(model_type="mt5", d_model=1024, num_layers=24, num_heads=16, d_kv=64,
                      d_ff=2816),
    "mt5_xl": dict(model_type="mt5", d_model=2048, num_layers=24, num_heads=32, d_kv=64, d_ff=5120),
    "mt5_xxl": dict(model_type="mt5", d_model=4096, num_layers=24, num_heads=64, d_kv=64,
                    d_ff=10240),
    "xlmr_base": dict(model_type="xlm-roberta", hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
    "xlmr_large": dict(model_type="xlm-roberta", hidden_size=1024, num_hidden_layers=24,
                       num_attention_heads=16, intermediate_size=4096),
    # LaBSE (HF sentence-transformers/LaBSE, with its pooler) and mBERT (bert-base-multilingual-cased).
    "labse": dict(model_type="bert", vocab_size=501153, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072, pooler=True),
    "mbert_base": dict(model_type="bert", vocab_size=119547, hidden_size=768, num_hidden_layers=12,
                       num_attention_heads=12, intermediate_size=3072, pooler=False),
    # sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2 (mean pooling, no pooler).
    "multilingual_minilm_l12": dict(model_type="bert", vocab_size=250037, hidden_size=384,
                                    num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=1536, pooler=False),
}
TINY_MODELS = ["mt5_tiny", "xlmr_tiny", "t5_1_0_tiny", "bert_tiny"]


def model_from_gin(name, bindings=()):
  gin.clear_config()
  gin_utils.parse([f"gin_configs/models/{name}.gin"], bindings, finalize=False)
  return gin_utils.evaluate("MODEL")


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def hf_encoder_parameter_count(published: dict) -> int:
  """Parameters of transformers' encoder with the published dims (built on the meta device)."""
  fields = {k: v for k, v in published.items() if k != "model_type"}
  with torch.device("meta"):
    if published["model_type"] == "bert":
      pooler = fields.pop("pooler")
      model = transformers.BertModel(transformers.BertConfig(**fields), add_pooling_layer=pooler)
    elif published["model_type"] == "mt5":
      model = transformers.MT5EncoderModel(transformers.MT5Config(
          vocab_size=250112, feed_forward_proj="gated-gelu", tie_word_embeddings=False, **fields))
    else:
      model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(
          vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, **fields), add_pooling_layer=False)
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_gin_model_size_has_published_parameter_count(name):
  model = model_from_gin(name)
  assert count(importers.abstract_params(model)) == hf_encoder_parameter_count(PUBLISHED[name])


def boxed_params(model):
  tokens = jnp.ones((2, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))["params"]


def params_without_axes(model) -> list[str]:
  """Params not boxed in nn.Partitioned with one logical axis name (a str) per dimension."""
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed_params(model), is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return [jax.tree_util.keystr(path) for path, leaf in leaves
          if not isinstance(leaf, nn.Partitioned) or len(leaf.names) != len(leaf.value.shape)
          or not all(isinstance(name, str) for name in leaf.names)]


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("shared_towers", [True, False])
def test_every_parameter_has_logical_axis_names(name, shared_towers):
  model = model_from_gin(name, [f"dual_encoder.DualEncoder.shared_towers = {shared_towers}",
                                "PROJECTION_DIM = 16"])
  assert params_without_axes(model) == []


def test_axis_names_follow_the_sharding_vocabulary():
  model = model_from_gin("mt5_tiny")
  params = flax.traverse_util.flatten_dict(boxed_params(model), sep="/")
  assert params["encoder/token_embedder/embedding"].names == ("vocab", "embed")
  assert params["encoder/layers_0/attention/query/kernel"].names == ("embed", "joined_kv")
  assert params["encoder/layers_0/mlp/wo/kernel"].names == ("mlp", "embed")
  assert params["encoder/relpos_bias/rel_embedding"].names == ("heads", "relpos_buckets")


def tiny_t5(**overrides):
  fields = dict(vocab_size=50, emb_dim=16, num_layers=2, num_heads=2, head_dim=8, mlp_dim=32,
                dropout_rate=0.1)
  fields.update(overrides)
  return t5.T5Config(**fields)


def test_bfloat16_activations_keep_float32_parameters():
  model = dual_encoder.DualEncoder(tiny_t5(dtype="bfloat16"))
  tokens = jnp.array([[5, 6, 7, 1, 0]])
  params = model.init(jax.random.PRNGKey(0), tokens, tokens)
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(params))} == {jnp.dtype(jnp.float32)}
  hidden = t5.T5Encoder(model.encoder_config).apply(
      {"params": nn.unbox(params)["params"]["encoder"]}, tokens)
  assert hidden.dtype == jnp.bfloat16
  reference = dual_encoder.DualEncoder(tiny_t5()).apply(params, tokens, method="encode")
  np.testing.assert_allclose(model.apply(params, tokens, method="encode"), reference, atol=3e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mt5_tiny", "xlmr_tiny", "bert_tiny"])
def test_scanned_layers_keep_the_parameters_outputs_and_gradients(name):
  unrolled, scanned = (model_from_gin(name, [f"SCAN_LAYERS = {scan}"]) for scan in (False, True))
  tokens = jnp.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]])
  params = unrolled.init(jax.random.PRNGKey(0), tokens, tokens)
  assert jax.tree.structure(scanned.init(jax.random.PRNGKey(0), tokens, tokens)) == (
      jax.tree.structure(params))
  loss = lambda model: lambda p: model.apply(p, tokens, method="encode").sum()
  np.testing.assert_allclose(loss(scanned)(params), loss(unrolled)(params), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(loss(scanned))(params)),
                  jax.tree.leaves(jax.grad(loss(unrolled))(params))):
    np.testing.assert_allclose(a, b, atol=1e-5)
  train = scanned.apply(params, tokens, deterministic=False, method="encode",
                        rngs={"dropout": jax.random.PRNGKey(1)})
  assert np.isfinite(train).all() and not np.allclose(train, scanned.apply(
      params, tokens, method="encode"))


def test_dropout_changes_training_outputs_but_not_inference():
  model = dual_encoder.DualEncoder(tiny_t5())
  tokens = jnp.array([[5, 6, 7, 8, 1]])
  params = model.init(jax.random.PRNGKey(0), tokens, tokens)
  encode = lambda key, deterministic: model.apply(
      params, tokens, deterministic=deterministic, method="encode", rngs={"dropout": key})
  np.testing.assert_array_equal(encode(jax.random.PRNGKey(1), True),
                                encode(jax.random.PRNGKey(2), True))
  assert not np.allclose(encode(jax.random.PRNGKey(1), False), encode(jax.random.PRNGKey(2), False))


def test_mean_pooling_ignores_padding_and_first_pooling_takes_token_zero():
  hidden = jnp.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
  mask = jnp.array([[True, True, False]])
  np.testing.assert_allclose(dual_encoder.pool(hidden, mask, "mean"), [[2.0, 3.0]])
  np.testing.assert_allclose(dual_encoder.pool(hidden, mask, "first"), [[1.0, 2.0]])


def test_embeddings_are_unit_length_with_projection():
  model = dual_encoder.DualEncoder(tiny_t5(), projection_dim=12)
  tokens = jnp.array([[5, 6, 7, 1, 0], [9, 1, 0, 0, 0]])
  params = model.init(jax.random.PRNGKey(0), tokens, tokens)
  query, passage = model.apply(params, tokens, tokens)
  assert query.shape == (2, 12)
  np.testing.assert_allclose(np.linalg.norm(query, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(query, passage)


def test_separate_towers_embed_queries_and_passages_differently():
  model = dual_encoder.DualEncoder(tiny_t5(), shared_towers=False)
  tokens = jnp.array([[5, 6, 7, 1]])
  params = model.init(jax.random.PRNGKey(0), tokens, tokens)
  assert set(params["params"]) == {"query_encoder", "passage_encoder"}
  query, passage = model.apply(params, tokens, tokens)
  assert not np.allclose(query, passage)


@pytest.mark.parametrize("field,value", [("num_heads", 0), ("mlp_activations", ("swish",)),
                                         ("relative_attention_num_buckets", 5)])
def test_bad_t5_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field if field != "mlp_activations" else "swish"):
    tiny_t5(**{field: value})


def test_xlmr_rejects_inputs_longer_than_its_positions():
  cfg = xlmr.XLMRConfig(vocab_size=20, emb_dim=8, num_layers=1, num_heads=2, head_dim=4,
                        mlp_dim=8, max_position_embeddings=10)
  tokens = jnp.ones((1, 9), jnp.int32)
  with pytest.raises(ValueError, match="exceeds XLM-R's maximum 8"):
    xlmr.XLMREncoder(cfg).init(jax.random.PRNGKey(0), tokens)
