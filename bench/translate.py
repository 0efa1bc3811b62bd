"""Translation throughput (sentences/s): CTranslate2 (int8, float32) vs transformers `generate`.

All three translate the same XQuAD-R English sentences, sorted by length and batched, greedily,
with one random MarianMT (built here; its decoder never emits </s>, so every output runs to
--max_length tokens and the work per sentence is fixed). The engines run alternately in one process
so machine noise hits all alike; the table gives medians and the ratios to transformers.

  python bench/translate.py [--sentences 256] [--batch_size 16] [--max_length 48] [--repeats 3]
      [--d_model 256] [--layers 3] [--threads 2]
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hybridir.translation import translate  # noqa: E402
from tests import test_translate  # noqa: E402  (the random-model builders)
from tests.conftest import shared_data_dir  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sentences", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--max_length", type=int, default=48)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=3)
  parser.add_argument("--vocab_size", type=int, default=4000)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()

  root = json.loads((shared_data_dir() / "xquad-r" / "en.json").read_text(encoding="utf-8"))
  sentences = [s for a in root["data"] for p in a["paragraphs"] for s in p["sentences"]]
  texts = translate.batches(sentences[:args.sentences], args.batch_size)
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    spm_model = test_translate.train_spm(sentences, scratch / "spm", args.vocab_size)
    model = test_translate.build_marian(
        scratch / "opus-mt-en-de", spm_model, "de", d_model=args.d_model,
        encoder_layers=args.layers, decoder_layers=args.layers, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model)
    engines = {
        name: translate.load_translator(str(model), "en", "de", engine, quantization,
                                        max_length=args.max_length, device="cpu",
                                        cache_dir=scratch / "ct2", threads=args.threads)
        for name, engine, quantization in [("ctranslate2 int8", "ctranslate2", "int8"),
                                           ("ctranslate2 float32", "ctranslate2", "float32"),
                                           ("transformers generate", "transformers", "float32")]}
    for engine in engines.values():
      engine(texts[0])  # Warm-up.
    seconds = {name: [] for name in engines}
    for _ in range(args.repeats):
      for name, engine in engines.items():
        start = time.perf_counter()
        for batch in texts:
          engine(batch)
        seconds[name].append(time.perf_counter() - start)

  count = sum(map(len, texts))
  print(f"{count} sentences, batch {args.batch_size}, greedy, {args.max_length} tokens out; "
        f"Marian d_model {args.d_model}, {args.layers}+{args.layers} layers, vocab "
        f"{args.vocab_size}; {args.threads} threads")
  print("| engine | median s | sentences/s | vs transformers |")
  print("|---|---|---|---|")
  reference = statistics.median(seconds["transformers generate"])
  for name, times in seconds.items():
    median = statistics.median(times)
    print(f"| {name} | {median:.2f} | {count / median:.1f} | {reference / median:.2f}x |")


if __name__ == "__main__":
  main()
