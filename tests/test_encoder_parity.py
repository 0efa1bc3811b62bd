"""The Flax encoders equal transformers' PyTorch models on the same weights and padded batches."""
import numpy as np
import pytest

from hybridir.training import importers
from tests import reference_models as ref

T5_CONFIGS = {
    "gated_gelu_dkv_differs": dict(d_model=16, d_kv=8, num_heads=3, num_layers=2),
    "relu_t5_1_0": dict(feed_forward_proj="relu", d_model=12, d_kv=4, num_heads=3, num_layers=1),
    "many_buckets_long_distance": dict(relative_attention_num_buckets=32,
                                       relative_attention_max_distance=128, num_layers=3,
                                       num_heads=2, d_kv=6, d_model=10),
    "big_vocab_few_buckets": dict(vocab_size=700, relative_attention_num_buckets=4,
                                  relative_attention_max_distance=8, num_heads=4, d_kv=4),
}
XLMR_CONFIGS = {
    "base_like": dict(),
    "one_layer_wide_heads": dict(num_hidden_layers=1, num_attention_heads=2, hidden_size=32),
    "three_layers_big_vocab": dict(num_hidden_layers=3, vocab_size=500, intermediate_size=16),
}
# Hidden sizes that are not multiples of 64, three heads, few layers.
BERT_CONFIGS = {
    "hidden_30_three_heads": dict(),
    "one_layer_hidden_21": dict(num_hidden_layers=1, hidden_size=21, num_attention_heads=3,
                                intermediate_size=19),
}
LENGTHS = [40, 23, 7, 1]  # Longer than max_distance, so log-spaced buckets are exercised.


def assert_close_on_real_tokens(ours, theirs, mask):
  real = mask.astype(bool)
  error = np.abs(ours[real] - theirs[real]).max() / np.abs(theirs[real]).max()
  assert error < 1e-5, f"relative error {error:.2e}"


REFERENCES = {"t5": (T5_CONFIGS, ref.save_random_mt5, 300, 0),
              "xlmr": (XLMR_CONFIGS, ref.save_random_xlmr, 302, 1),
              "bert": (BERT_CONFIGS, ref.save_random_bert, 303, 0)}


@pytest.mark.parametrize("family,name", [(family, name) for family in REFERENCES
                                         for name in sorted(REFERENCES[family][0])])
def test_encoder_matches_transformers_on_padded_batches(tmp_path, family, name):
  configs, save_random, default_vocab_size, pad_id = REFERENCES[family]
  overrides = dict(configs[name])
  vocab_size = overrides.pop("vocab_size", default_vocab_size)
  torch_model = save_random(tmp_path, vocab_size=vocab_size, **overrides)
  model, params = importers.load_hf(str(tmp_path))
  tokens, mask = ref.random_padded_batch(vocab_size, LENGTHS, pad_id=pad_id)
  assert_close_on_real_tokens(ref.flax_hidden(model, params, tokens, mask),
                              ref.torch_hidden(torch_model, tokens, mask), mask)


@pytest.mark.slow
def test_padding_does_not_change_real_token_outputs(tmp_path):
  ref.save_random_mt5(tmp_path)
  model, params = importers.load_hf(str(tmp_path))
  tokens, mask = ref.random_padded_batch(300, [9], pad_id=0)
  padded = np.pad(tokens, ((0, 0), (0, 20)))
  short = ref.flax_hidden(model, params, tokens, mask)
  long = ref.flax_hidden(model, params, padded, padded != 0)
  np.testing.assert_allclose(long[:, :9], short, rtol=1e-5, atol=1e-6)
