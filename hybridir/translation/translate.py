"""Machine-translates a QA corpus into other languages, resumably, to make parallel training data.

  python -m hybridir.translate --input FILE --source_language en --languages de,zh,sw \
      --model PATH --output DIR [--engine ctranslate2|transformers] [--quantization int8|float32] \
      [--unit passage|sentence] [--batch_size 16] [--beam_size 1] [--max_length 256]

FILE is SQuAD JSON or the corpora JSONL format. `--model` is one Hugging Face seq2seq folder
(M2M100, NLLB, a multilingual Marian) or a template such as `models/opus-mt-{src}-{tgt}`. Writes
DIR/<lang>.jsonl for the source and every target language (`corpora.load_parallel_corpus(DIR)`
loads them) and DIR/_translation/summary.json (dropped records per filter, missing pair ids,
sentences/s). Every distinct text (question, passage or sentence) is translated once; batches,
sorted by length, are committed as numbered shard files, so a killed run restarts where it stopped
and its final files equal an uninterrupted run's.
"""
import argparse
import dataclasses
import hashlib
import json
import logging
import pathlib
import re
import sys
import tempfile
import time
from typing import Callable, Mapping, Sequence

from hybridir import console
from hybridir.data import corpora
from hybridir import errors
from hybridir import fs
from hybridir.translation import mt_engines
from hybridir.translation.mt_engines import TranslateError
from hybridir.translation.mt_engines import load_translator

Translator = mt_engines.Translator
ENGINES = mt_engines.ENGINES
UNITS = ("passage", "sentence")
FILTERS = ("empty", "identical", "length_ratio", "repetition")
WORK_FOLDER = "_translation"  # The corpus loader skips folders named with a leading "_" or ".".
_UNSPACED_LANGUAGES = ("zh", "ja")  # Sentences are joined without a space.
# Characters per unit of meaning relative to alphabetic scripts, for the length-ratio filter.
_CHARACTER_DENSITY = {"zh": 3.0, "ja": 2.0, "ko": 2.0}
# ISO 639-1 -> NLLB-200 (FLORES-200) codes of common languages.
@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Which filters run and their bounds; a record is dropped when any of its texts fails one."""
  enabled: tuple[str, ...] = FILTERS
  min_length_ratio: float = 0.3  # Translation / source characters (density-scaled for CJK).
  max_length_ratio: float = 3.0
  max_repeats: int = 4  # Dropped when a stretch of text occurs this many times in a row.

  def __post_init__(self):
    unknown = sorted(set(self.enabled) - set(FILTERS))
    if unknown:
      raise TranslateError(f"unknown filters {unknown}; expected some of {list(FILTERS)}")
    if not 0 <= self.min_length_ratio < self.max_length_ratio:
      raise TranslateError(f"length ratio bounds must satisfy 0 <= min < max, found "
                           f"[{self.min_length_ratio}, {self.max_length_ratio}]")
    if self.max_repeats < 2:
      raise TranslateError(f"max_repeats must be at least 2, found {self.max_repeats}")


def is_identical(source: str, translation: str) -> bool:
  """Same text up to whitespace, for a source of at least three words (names may stay as is)."""
  words = [w for w in source.split() if any(c.isalpha() for c in w)]
  return len(words) >= 3 and " ".join(source.split()) == " ".join(translation.split())


def length_ratio(source: str, translation: str, source_language: str,
                 target_language: str) -> float:
  """Translation length over source length in characters, scaled by script density."""
  source_length = len(source.strip()) * _CHARACTER_DENSITY.get(source_language, 1.0)
  target_length = len(translation.strip()) * _CHARACTER_DENSITY.get(target_language, 1.0)
  return target_length / max(source_length, 1.0)


_REPEAT = re.compile(r"(.{2,50}?)\1+", re.S)


def longest_repeat(text: str) -> int:
  """The most copies in a row of one stretch of 2 to 50 characters holding a letter (any case)."""
  text, best = " ".join(text.casefold().split()) + " ", 1 if text.strip() else 0
  for match in _REPEAT.finditer(text):  # The space ends "la la la" like "la la la ".
    if any(c.isalpha() for c in match.group(1)):
      best = max(best, len(match.group(0)) // len(match.group(1)))
  return best


def rejection(source: str, translation: str, source_language: str, target_language: str,
              config: FilterConfig) -> str | None:
  """The first filter (in FILTERS order) the translation fails, or None."""
  checks = {
      "empty": lambda: not translation.strip(),
      "identical": lambda: is_identical(source, translation),
      "length_ratio": lambda: not (config.min_length_ratio <= length_ratio(
          source, translation, source_language, target_language) <= config.max_length_ratio),
      "repetition": lambda: longest_repeat(translation) >= config.max_repeats,
  }
  return next((name for name in FILTERS if name in config.enabled and checks[name]()), None)


def read_input(path: corpora.PathLike, source_language: str) -> list[corpora.QAPair]:
  """The source language's QA pairs of a SQuAD .json (passage = paragraph) or .jsonl file."""
  path = fs.path(path)
  corpora.check_language(source_language, "--source_language")
  if path.suffix == ".json":
    pairs = corpora.read_squad(path, source_language, "paragraph")
  elif path.suffix == ".jsonl":
    pairs = [p for p in corpora.read_jsonl(path) if p.language == source_language]
  else:
    raise TranslateError(f"{path}: --input must be a SQuAD .json or a .jsonl file")
  if not pairs:
    raise TranslateError(f"{path}: no records in language {source_language!r}")
  seen = set()
  for pair in pairs:
    if pair.pair_id in seen:
      raise TranslateError(f"{path}: record id {pair.pair_id!r}: duplicate id")
    seen.add(pair.pair_id)
  return pairs


def passage_parts(passage: str, anchors: Sequence[str], unit: str) -> tuple[str, ...]:
  """The passage whole, or its sentences with each anchor (answer sentence) kept as one part."""
  return (passage,) if unit == "passage" else corpora.sentence_parts(passage, anchors)


def plan(pairs: Sequence[corpora.QAPair], unit: str) -> dict[str, tuple[str, ...]]:
  """Passage -> its parts to translate, with every answer sentence of the passage as one part."""
  if unit not in UNITS:
    raise TranslateError(f"--unit must be one of {UNITS}, found {unit!r}")
  anchors = {}
  for pair in pairs:
    anchors.setdefault(pair.passage, []).append(pair.answer_sentence or "")
  return {passage: passage_parts(passage, sorted(set(a)), unit) for passage, a in anchors.items()}


def segments(pairs: Sequence[corpora.QAPair], parts: Mapping[str, tuple[str, ...]]) -> list[str]:
  """Every distinct text to translate, in first-use order."""
  texts = []
  for pair in pairs:
    texts += [pair.question, *parts[pair.passage]]
    if pair.answer_sentence:
      texts.append(pair.answer_sentence.strip())
  return list(dict.fromkeys(texts))


def batches(texts: Sequence[str], batch_size: int) -> list[list[str]]:
  """Texts sorted by length (ties by position) in chunks of `batch_size`."""
  if batch_size < 1:
    raise TranslateError(f"--batch_size must be at least 1, found {batch_size}")
  order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
  return [[texts[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` atomically (hybridir.fs: temporary file and rename, or one upload)."""
  fs.write_text_atomically(path, text)


def _shard_path(folder: pathlib.Path, index: int) -> pathlib.Path:
  return folder / f"batch-{index:06d}.json"


def _check_manifest(folder: pathlib.Path, manifest: Mapping) -> None:
  """Creates the shard folder's manifest, or checks a resumed run uses the same settings."""
  path = folder / "manifest.json"
  if not path.exists():
    write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))
    return
  found = json.loads(path.read_text(encoding="utf-8"))
  changed = [f"{key}={found.get(key)!r}, now {value!r}" for key, value in manifest.items()
             if found.get(key) != value]
  if changed:
    raise TranslateError(f"{path}: this partial output was made with other settings ("
                         f"{'; '.join(changed)}); rerun with the same settings or a new --output")


def _load_shards(folder: pathlib.Path, batch_list: Sequence[Sequence[str]]) -> dict[str, str]:
  """Source text -> translation from every shard, each checked against its batch."""
  translations = {}
  for index, batch in enumerate(batch_list):
    path = _shard_path(folder, index)
    shard = json.loads(path.read_text(encoding="utf-8"))
    if shard["sources"] != list(batch) or len(shard["translations"]) != len(batch):
      raise TranslateError(f"{path}: shard does not match batch {index} of this input")
    translations.update(zip(shard["sources"], shard["translations"]))
  return translations


def _record(pair: corpora.QAPair, language: str, question: str, passage: str,
            answer_sentence: str | None) -> str:
  record = {"id": pair.pair_id, "lang": language, "question": question, "passage": passage,
            "article_id": pair.article_id}
  if answer_sentence is not None:
    record["answer_sentence"] = answer_sentence
  return json.dumps(record, ensure_ascii=False)


def _translate_language(pairs, parts, target, output_dir, make_translator, batch_size,
                        settings, show_progress) -> tuple[dict[str, str], int, float]:
  """(text -> translation, texts translated by this run, seconds) for one target language."""
  texts = segments(pairs, parts)
  batch_list = batches(texts, batch_size)
  folder = fs.path(output_dir) / WORK_FOLDER / "shards" / target
  _check_manifest(folder, {**settings, "target_language": target, "batch_size": batch_size,
                           "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()})
  for stale in folder.glob(".*.tmp"):  # Left by a killed run; never read.
    stale.unlink()
  pending = [i for i in range(len(batch_list)) if not _shard_path(folder, i).exists()]
  started, done = time.monotonic(), 0
  if pending:
    import tqdm
    translate = make_translator(target)
    started = time.monotonic()
    total = len(texts)
    with tqdm.tqdm(total=total, initial=total - sum(len(batch_list[i]) for i in pending),
                   unit="sentence", desc=f"translate {target}", disable=not show_progress) as bar:
      for index in pending:
        translations = list(translate(batch_list[index]))
        if len(translations) != len(batch_list[index]):
          raise TranslateError(f"translator gave {len(translations)} outputs for batch {index} "
                               f"of {len(batch_list[index])} texts ({target})")
        write_atomic(_shard_path(folder, index), json.dumps(
            {"sources": batch_list[index], "translations": translations}, ensure_ascii=False))
        done += len(translations)
        bar.update(len(translations))
  seconds = time.monotonic() - started
  logging.getLogger(__name__).info("%s: %d texts translated in %.1f s (%.1f sentences/s)",
                                   target, done, seconds, done / max(seconds, 1e-9))
  return _load_shards(folder, batch_list), done, seconds


def translate_corpus(pairs: Sequence[corpora.QAPair], source_language: str,
                     languages: Sequence[str], output_dir: corpora.PathLike,
                     make_translator: Callable[[str], Translator], unit: str = "passage",
                     batch_size: int = 16, filters: FilterConfig = FilterConfig(),
                     settings: Mapping | None = None, show_progress: bool = True) -> dict:
  """Writes output_dir/<lang>.jsonl for the source and each target language; returns the summary.

  `make_translator(target)` gives the function translating a batch of source texts; it is called
  only for languages with batches left. `settings` (model, engine, ...) must match a resumed run.
  """
  output_dir = fs.path(output_dir)
  for language in languages:
    corpora.check_language(language, "--languages")
    if language == source_language:
      raise TranslateError(f"--languages: {language!r} is the source language")
  started, parts = time.monotonic(), plan(pairs, unit)
  settings = {**(settings or {}), "source_language": source_language, "unit": unit}
  # The corpus files are written together at the end: a failed run leaves only its shards.
  outputs = {source_language: "".join(
      _record(p, source_language, p.question, p.passage, p.answer_sentence) + "\n"
      for p in pairs)}
  summary = {"source_language": source_language, "unit": unit, "input_records": len(pairs),
             "filters": {**dataclasses.asdict(filters), "enabled": list(filters.enabled)},
             "languages": {}}
  missing = {}
  total_done = 0
  for target in languages:
    translations, done, seconds = _translate_language(
        pairs, parts, target, output_dir, make_translator, batch_size, settings, show_progress)
    total_done += done
    verdicts = {text: rejection(text, translations[text], source_language, target, filters)
                for text in translations}
    joiner = "" if target in _UNSPACED_LANGUAGES else " "
    lines, dropped = [], dict.fromkeys(FILTERS, 0)
    for pair in pairs:
      answer = pair.answer_sentence.strip() if pair.answer_sentence else None
      texts = [pair.question, *parts[pair.passage]] + ([answer] if answer else [])
      reason = next((verdicts[t] for t in texts if verdicts[t]), None)
      if reason:
        dropped[reason] += 1
        missing.setdefault(pair.pair_id, []).append(target)
        continue
      passage = joiner.join(translations[t] for t in parts[pair.passage])
      lines.append(_record(pair, target, translations[pair.question], passage,
                           translations[answer] if answer else None) + "\n")
    outputs[target] = "".join(lines)
    summary["languages"][target] = {
        "records_written": len(lines), "dropped": dropped, "texts": len(translations),
        "texts_translated_this_run": done, "seconds": round(seconds, 3),
        "sentences_per_second": round(done / seconds, 2) if done else None}
  for language, text in outputs.items():
    write_atomic(output_dir / f"{language}.jsonl", text)
  seconds = time.monotonic() - started
  summary.update(seconds=round(seconds, 3), missing_pair_ids=dict(sorted(missing.items())),
                 sentences_per_second=round(total_done / seconds, 2) if total_done else None)
  write_atomic(output_dir / WORK_FOLDER / "summary.json", json.dumps(summary, indent=1) + "\n")
  return summary


def _parser() -> argparse.ArgumentParser:
  parser = console.ArgumentParser(prog="python -m hybridir.translate", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, help="SQuAD .json or corpora .jsonl file")
  parser.add_argument("--source_language", required=True)
  parser.add_argument("--languages", required=True, help="comma-separated targets, e.g. de,zh")
  parser.add_argument("--model", required=True, help="HF folder, or template with {src} {tgt}")
  parser.add_argument("--output", required=True, help="folder for <lang>.jsonl")
  parser.add_argument("--engine", choices=ENGINES, default="ctranslate2")
  parser.add_argument("--quantization", choices=("int8", "float32"), default="float32",
                      help="CTranslate2 weights (int8: faster on CPU)")
  parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
  parser.add_argument("--unit", choices=UNITS, default="passage",
                      help="translate whole passages, or sentence by sentence")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--beam_size", type=int, default=1)
  parser.add_argument("--max_length", type=int, default=256, help="most generated tokens")
  parser.add_argument("--filters", default=",".join(FILTERS),
                      help=f"comma-separated, of {','.join(FILTERS)}; 'none' for none")
  parser.add_argument("--min_length_ratio", type=float, default=FilterConfig.min_length_ratio)
  parser.add_argument("--max_length_ratio", type=float, default=FilterConfig.max_length_ratio)
  parser.add_argument("--max_repeats", type=int, default=FilterConfig.max_repeats)
  parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: library default)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  languages = [code.strip() for code in args.languages.split(",") if code.strip()]
  enabled = () if args.filters == "none" else tuple(
      name.strip() for name in args.filters.split(",") if name.strip())
  settings = {"model": args.model, "engine": args.engine, "quantization": args.quantization,
              "beam_size": args.beam_size, "max_length": args.max_length}
  # The converted model is a local cache (the engine reads local files), even for gs:// output.
  cache_dir = pathlib.Path(tempfile.gettempdir() if fs.is_remote(args.output) else args.output) / (
      WORK_FOLDER) / "ct2"
  try:
    filters = FilterConfig(enabled, args.min_length_ratio, args.max_length_ratio,
                           args.max_repeats)
    pairs = read_input(args.input, args.source_language)
    for target in languages:
      corpora.check_language(target, "--languages")
    for target in languages:  # Every model is found before anything is written.
      mt_engines.model_folder(args.model, args.source_language, target)
    fs.check_writable(args.output, "--output")
    summary = translate_corpus(
        pairs, args.source_language, languages, args.output,
        lambda target: load_translator(args.model, args.source_language, target, args.engine,
                                       args.quantization, args.beam_size, args.max_length,
                                       args.device, cache_dir, args.threads),
        args.unit, args.batch_size, filters, settings, show_progress=not args.quiet)
  except (ValueError, OSError) as e:  # CorpusError, TranslateError, missing files: say why.
    print(errors.one_line(e), file=sys.stderr)
    return 1
  for language, stats in summary["languages"].items():
    print(f"{language}: {stats['records_written']} records, dropped {stats['dropped']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
