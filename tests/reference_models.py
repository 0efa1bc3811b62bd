"""Random tiny transformers models (the reference implementations) and their Flax counterparts."""
import json
import os
import subprocess
import sys

import numpy as np
import torch
import transformers

from hybridir.models import dual_encoder


def xquad_texts(data_dir, languages=("en", "de", "zh", "ar"), limit=400) -> list[str]:
  """Paragraphs and questions from XQuAD-R, for training tiny SentencePiece models."""
  texts = []
  for lang in languages:
    with open(data_dir / "xquad-r" / f"{lang}.json") as f:
      for article in json.load(f)["data"]:
        for paragraph in article["paragraphs"]:
          texts.append(paragraph["context"])
          texts.extend(qa["question"] for qa in paragraph["qas"])
    texts = texts[:limit * len(languages)]
  return texts


def save_random_mt5(model_dir, vocab_size=300, seed=0, **overrides):
  """A random MT5EncoderModel saved with save_pretrained; returns the torch model (eval mode)."""
  config = dict(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=3,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False)
  config.update(overrides)
  torch.manual_seed(seed)
  model = transformers.MT5EncoderModel(transformers.MT5Config(**config)).eval()
  _randomize_norms(model, seed)
  model.save_pretrained(model_dir)
  return model


def save_random_xlmr(model_dir, vocab_size=302, seed=0, **overrides):
  """A random XLMRobertaModel saved with save_pretrained; returns the torch model (eval mode)."""
  config = dict(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=40, max_position_embeddings=130, type_vocab_size=1,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1,
                bos_token_id=0, eos_token_id=2)
  config.update(overrides)
  torch.manual_seed(seed)
  model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(**config),
                                       add_pooling_layer=False).eval()
  _randomize_norms(model, seed)
  model.save_pretrained(model_dir)
  return model


def _randomize_norms(model, seed):
  """Norm scales start at one and biases at zero: perturb them so their mapping is tested."""
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name.lower() or name.endswith(".bias"):
        param.add_(0.1 * torch.randn(param.shape, generator=generator))


def torch_hidden(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.last_hidden_state.numpy()


def torch_mean_pooled(model, tokenizer, texts) -> np.ndarray:
  """sentence-transformers' default: mean over the attention mask, then L2 normalisation."""
  batch = tokenizer(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).float()
  pooled = (hidden * mask).sum(1) / mask.sum(1)
  return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def flax_hidden(model: dual_encoder.DualEncoder, params, tokens, mask) -> np.ndarray:
  encoder = dual_encoder.encoder_module(model.encoder_config)
  return np.asarray(encoder.apply({"params": params["encoder"]}, tokens, mask))


def random_padded_batch(vocab_size, lengths, pad_id, seed=0, low=3):
  """Token ids [batch, max(lengths)] with trailing padding, and the mask of real tokens."""
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths), max(lengths)), pad_id, np.int64)
  mask = np.zeros_like(tokens)
  for row, length in enumerate(lengths):
    tokens[row, :length] = rng.integers(low, vocab_size, length)
    mask[row, :length] = 1
  return tokens, mask


def write_spm(model_dir, spm_path, family):
  """Puts the SentencePiece file where the hub puts it (save_pretrained writes tokenizer.json)."""
  name = "spiece.model" if family == "t5" else "sentencepiece.bpe.model"
  with open(spm_path, "rb") as src, open(os.path.join(model_dir, name), "wb") as dst:
    dst.write(src.read())


def save_random_bert(model_dir, vocab_size, seed=0, **overrides):
  """A random BertModel (with its pooler) saved with save_pretrained; returns it (eval mode)."""
  config = dict(vocab_size=vocab_size, hidden_size=30, num_hidden_layers=2, num_attention_heads=3,
                intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
  config.update(overrides)
  torch.manual_seed(seed)
  model = transformers.BertModel(transformers.BertConfig(**config)).eval()
  _randomize_norms(model, seed)
  model.save_pretrained(model_dir)
  return model


def write_wordpiece(model_dir, vocab_path, vocab_txt=True) -> transformers.BertTokenizer:
  """A cased tokenizer as transformers saves it (tokenizer.json, tokenizer_config.json) and, as
  the hub has it, vocab.txt; returns transformers' tokenizer."""
  tokenizer = transformers.BertTokenizer(vocab=str(vocab_path), do_lower_case=False)
  tokenizer.save_pretrained(model_dir)
  if vocab_txt:
    with open(vocab_path, "rb") as src, open(os.path.join(model_dir, "vocab.txt"), "wb") as dst:
      dst.write(src.read())
  return tokenizer


def save_sentence_transformer(model_dir, pooling_mode: str, dense: bool, normalize: bool,
                              seed=0):
  """A sentence-transformers folder around the BERT model in model_dir: Transformer, Pooling
  (`pooling_mode`), optionally a random Dense with tanh (LaBSE's head) and Normalize. Returns the
  loaded SentenceTransformer."""
  import sentence_transformers
  from sentence_transformers.base import modules as base_modules
  from sentence_transformers.sentence_transformer import modules as st_modules
  transformer = base_modules.Transformer(str(model_dir))
  dim = transformer.get_embedding_dimension()
  modules = [transformer, st_modules.Pooling(dim, pooling_mode=pooling_mode)]
  if dense:
    torch.manual_seed(seed + 2)
    modules.append(base_modules.Dense(dim, dim, activation_function=torch.nn.Tanh()))
  if normalize:
    modules.append(base_modules.Normalize())
  model = sentence_transformers.SentenceTransformer(modules=modules, device="cpu")
  model.save(str(model_dir))
  return sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")


# Run with `python -c`: sentence-transformers as a user without sentencepiece has it.
_WITHOUT_SENTENCEPIECE = """
import json, sys
sys.modules["sentencepiece"] = None  # `import sentencepiece` fails; importlib.util.find_spec: None.
import transformers
assert not transformers.utils.is_sentencepiece_available()
import sentence_transformers
request = json.load(sys.stdin)
model = sentence_transformers.SentenceTransformer(request["folder"], device="cpu")
texts = request["texts"]
print(json.dumps({
    "max_seq_length": model.max_seq_length,
    "input_ids": model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"],
    "embeddings": [model.encode(texts, **options).tolist() for options in request["options"]]}))
"""


def sentence_transformer_without_sentencepiece(folder, texts, options=({},)) -> dict:
  """What sentence-transformers makes of `folder` in a process where sentencepiece cannot be
  imported: {max_seq_length, input_ids of the texts, embeddings: [model.encode(texts, **o) for o
  in options]}."""
  request = {"folder": str(folder), "texts": list(texts), "options": list(options)}
  result = subprocess.run([sys.executable, "-c", _WITHOUT_SENTENCEPIECE], input=json.dumps(request),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  answer = json.loads(result.stdout.splitlines()[-1])
  answer["embeddings"] = [np.array(e, np.float32) for e in answer["embeddings"]]
  return answer
