"""`make demo`: what runs end to end today, on the data in ../shared/data.

It trains a SentencePiece vocabulary on XQuAD-R text, builds a tiny mT5 dual encoder from
`gin_configs/models/mt5_tiny.gin` (random weights: nothing is trained yet at this stage),
loads the real T5X tiny checkpoint, and encodes parallel XQuAD-R questions with both.
The full study (training mono / cross / hybrid and evaluating) replaces this as it lands.
"""
import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from hybridir import export
from hybridir import gin_utils
from hybridir import importers
from hybridir import vocab as vocab_lib

_DATA_DIR = flags.DEFINE_string("data_dir", os.environ.get("HYBRIDIR_DATA_DIR", "../shared/data"),
                                "Folder holding xquad-r/ and t5x-tiny-checkpoint/.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "out/demo", "Where the vocabulary is written.")
LANGUAGES = ("en", "de", "zh", "ar")


def parallel_questions(data_dir: str, count: int) -> dict[str, list[str]]:
  """The first `count` questions of XQuAD-R in each language (same ids, so translations)."""
  out = {}
  for lang in LANGUAGES:
    with open(os.path.join(data_dir, "xquad-r", f"{lang}.json")) as f:
      data = json.load(f)["data"]
    out[lang] = [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]][:count]
  return out


def training_text(data_dir: str) -> list[str]:
  texts = []
  for lang in LANGUAGES:
    with open(os.path.join(data_dir, "xquad-r", f"{lang}.json")) as f:
      texts += [p["context"] for a in json.load(f)["data"] for p in a["paragraphs"]]
  return texts


def report(name: str, embeddings: dict[str, np.ndarray]) -> None:
  """Mean cosine of a question with its own translation vs with other questions."""
  print(f"\n{name}: embedding dim {embeddings['en'].shape[1]}")
  for lang in LANGUAGES[1:]:
    sims = embeddings["en"] @ embeddings[lang].T
    own = np.mean(np.diag(sims))
    other = (sims.sum() - np.trace(sims)) / (sims.size - len(sims))
    print(f"  en-{lang}: cosine with own translation {own:+.3f}, with other questions {other:+.3f}")


def main(argv):
  del argv
  data_dir = _DATA_DIR.value
  print(f"jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} device(s)")
  spm_path = vocab_lib.train_sentencepiece(
      training_text(data_dir), os.path.join(_OUTPUT_DIR.value, "spm_t5"), 4000, "t5")
  vocabulary = vocab_lib.get_vocabulary("t5", spm_path)
  print(f"SentencePiece vocabulary ({vocabulary.vocab_size} pieces) trained: {spm_path}")
  questions = parallel_questions(data_dir, 64)

  gin_utils.parse(["gin_configs/models/mt5_tiny.gin"], [f"VOCAB_SIZE = {vocabulary.vocab_size}"])
  model = gin_utils.evaluate("MODEL")
  tokens = np.ones((1, 8), np.int32)
  params = model.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
  tiny = export.Encoder(model, jax.tree.map(np.asarray, importers.nn.unbox(params)), vocabulary)
  report("tiny mT5 dual encoder, random weights (untrained: only shared names and digits make a translation look closer)",
         {lang: tiny.encode(texts) for lang, texts in questions.items()})

  t5x = export.load_encoder(
      os.path.join(data_dir, "t5x-tiny-checkpoint", "test_de_t5_tiny.checkpoint_1000"),
      vocabulary=spm_path)
  report("T5X tiny test checkpoint (real weights, but embed dim 4 and a different vocabulary: "
         "a loading check, not a retriever)",
         {lang: t5x.encode(texts) for lang, texts in questions.items()})


if __name__ == "__main__":
  app.run(main)
