"""Translation: one record per id and language, resumable after SIGKILL, filters, engines, training.

The models are tiny random MarianMT and M2M100 checkpoints with SentencePiece vocabularies trained
here on XQuAD-R English; their output is gibberish, so runs that must keep every record switch the
filters off, and the filters are checked on crafted strings and an injected fake translator.
"""
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from hybridir.data import corpora
from hybridir.translation import mt_engines
from hybridir.translation import translate
from tests.conftest import REPO_ROOT

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
NO_FILTERS = ["--filters", "none"]
TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_position_embeddings=512)


def _pieces(spm_model: pathlib.Path) -> list[str]:
  import sentencepiece as spm
  processor = spm.SentencePieceProcessor(model_file=str(spm_model))
  return [processor.id_to_piece(i) for i in range(processor.get_piece_size())
          if not processor.is_control(i) and not processor.is_unknown(i)]


def train_spm(texts: list[str], prefix: pathlib.Path, vocab_size: int) -> pathlib.Path:
  """A unigram SentencePiece model (the translation models' own vocabulary)."""
  import sentencepiece as spm
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, num_threads=1, minloglevel=2)
  return pathlib.Path(f"{prefix}.model")


def build_marian(folder: pathlib.Path, spm_model: pathlib.Path, target: str,
                 **dims) -> pathlib.Path:
  """A random MarianMT en->target (TINY unless `dims`) whose decoder never ends early."""
  folder.mkdir(parents=True)
  for name in ("source.spm", "target.spm"):
    (folder / name).write_bytes(spm_model.read_bytes())
  vocab = {"</s>": 0, "<unk>": 1}
  for piece in _pieces(spm_model):
    vocab.setdefault(piece, len(vocab))
  vocab["<pad>"] = len(vocab)  # Marian's pad is last and starts the decoder.
  (folder / "vocab.json").write_text(json.dumps(vocab))
  tokenizer = transformers.MarianTokenizer(
      str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
      source_lang="en", target_lang=target)
  config = transformers.MarianConfig(
      vocab_size=len(vocab), pad_token_id=len(vocab) - 1, eos_token_id=0,
      decoder_start_token_id=len(vocab) - 1, forced_eos_token_id=0, init_std=0.3,
      **{**TINY, **dims})
  torch.manual_seed(0)
  model = transformers.MarianMTModel(config)
  model.final_logits_bias[0, 0] = -100.0  # Never </s>: every output runs to max_length.
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder


def build_m2m100(folder: pathlib.Path, spm_model: pathlib.Path) -> pathlib.Path:
  """A random many-to-many M2M100 with the 100 `__xx__` language tokens after the vocabulary."""
  folder.mkdir(parents=True)
  (folder / "sentencepiece.bpe.model").write_bytes(spm_model.read_bytes())
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
  for piece in _pieces(spm_model):
    vocab.setdefault(piece, len(vocab))
  (folder / "vocab.json").write_text(json.dumps(vocab))
  tokenizer = transformers.M2M100Tokenizer(str(folder / "vocab.json"),
                                           str(folder / "sentencepiece.bpe.model"))
  config = transformers.M2M100Config(vocab_size=len(vocab) + 100 + 8, **TINY)  # + madeup words.
  torch.manual_seed(0)
  transformers.M2M100ForConditionalGeneration(config).save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder


def build_nllb(folder: pathlib.Path, spm_model: pathlib.Path) -> pathlib.Path:
  """A random NLLB (M2M100 weights, NllbTokenizer with eng_Latn-style codes), codes never output."""
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
  for piece in _pieces(spm_model):
    vocab.setdefault(piece, len(vocab))
  tokenizer = transformers.NllbTokenizer(vocab=vocab, merges=[])
  torch.manual_seed(0)
  model = transformers.M2M100ForConditionalGeneration(
      transformers.M2M100Config(vocab_size=len(tokenizer), **TINY))
  with torch.no_grad():  # Zero logits for the language codes (the output embeddings are tied).
    model.get_input_embeddings().weight[len(vocab):] = 0.0
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return folder


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory, data_dir) -> pathlib.Path:
  """The first paragraph of each of the first three XQuAD-R English articles (20 questions)."""
  root = json.loads((data_dir / "xquad-r" / "en.json").read_text(encoding="utf-8"))
  data = [{"title": a["title"], "paragraphs": a["paragraphs"][:1]} for a in root["data"][:3]]
  path = tmp_path_factory.mktemp("input") / "en.json"
  path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, data_dir) -> pathlib.Path:
  """models/opus-mt-en-{de,sw} (MarianMT), models/m2m100 (M2M100) and models/nllb."""
  folder = tmp_path_factory.mktemp("models")
  root = json.loads((data_dir / "xquad-r" / "en.json").read_text(encoding="utf-8"))
  texts = [t for a in root["data"][:10] for p in a["paragraphs"]
           for t in p["sentences"] + [q["question"] for q in p["qas"]]]
  spm_model = train_spm(texts, folder / "spm", 300)
  for target in ("de", "sw"):
    build_marian(folder / f"opus-mt-en-{target}", spm_model, target)
  build_m2m100(folder / "m2m100", spm_model)
  build_nllb(folder / "nllb", spm_model)
  return folder


def run_cli(*args) -> int:
  return translate.main([*map(str, args), "--quiet", "--threads", "1"])


@pytest.fixture(scope="module")
def translated_dir(tmp_path_factory, squad_file, models) -> pathlib.Path:
  """en, de, sw translated by the Marian models with transformers, filters off."""
  output = tmp_path_factory.mktemp("translated")
  assert run_cli("--input", squad_file, "--source_language", "en", "--languages", "de,sw",
                 "--model", models / "opus-mt-{src}-{tgt}", "--output", output,
                 "--engine", "transformers", "--batch_size", 8, "--max_length", 16,
                 *NO_FILTERS) == 0
  return output


def read_lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_output_has_one_record_per_id_and_language_and_loads_as_a_corpus(translated_dir,
                                                                          squad_file):
  ids = [p.pair_id for p in corpora.read_squad(squad_file, "en")]
  corpus = corpora.load_parallel_corpus(translated_dir)
  assert corpus.languages == ("de", "en", "sw")
  for language in corpus.languages:
    assert [r["id"] for r in read_lines(translated_dir / f"{language}.jsonl")] == ids
    assert sorted(corpus.pairs[language]) == sorted(ids)
  assert corpus.pairs["en"][ids[0]] == dataclasses.replace(  # One source: the folder's name.
      corpora.read_squad(squad_file, "en")[0], source=translated_dir.name)
  summary = json.loads((translated_dir / "_translation" / "summary.json").read_text())
  assert summary["languages"]["de"]["records_written"] == len(ids)
  assert summary["missing_pair_ids"] == {}


@pytest.mark.slow
def test_translated_output_trains_a_few_steps_with_smoke_gin(translated_dir, tmp_path):
  corpus = corpora.load_parallel_corpus(translated_dir, languages=["en", "de"])
  characters = {c for pairs in corpus.pairs.values() for p in pairs.values()
                for c in p.question + p.passage}
  vocab_size = max(256, len(characters) + 64)  # SentencePiece needs one piece per character.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run(
      [sys.executable, "-m", "hybridir.main", "--gin_file=gin_configs/runs/smoke.gin",
       f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=3", "--gin.WARMUP_STEPS=1",
       "--gin.CHECKPOINT_PERIOD=3",
       f"--gin.CORPUS_DIR='{translated_dir}'", "--gin.LANGUAGES=['en','de']",
       "--gin.CORPUS_NAME='translated'", "--gin.MIXTURE_OR_TASK_NAME='translated_hybrid'",
       f"--gin.SPM_PREFIX='{tmp_path / 'spm'}'", f"--gin.VOCAB_SIZE={vocab_size}",
       f"--gin.BATCH_SIZE={min(8, len(corpus.pair_ids()))}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(tmp_path / "checkpoints") == ["3"]


def kill_after_first_commit(args: list[str], shards: pathlib.Path) -> subprocess.Popen:
  """Starts the CLI and SIGKILLs it as soon as a batch shard is committed."""
  process = subprocess.Popen([sys.executable, "-m", "hybridir.translate", *args], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  while not any(shards.glob("batch-*.json")):
    try:
      process.wait(timeout=0.002)
    except subprocess.TimeoutExpired:
      continue
    pytest.fail(f"finished before a shard was seen: {process.stderr.read()[-2000:]}")
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  return process


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path, squad_file, models):
  def args(output):
    return ["--input", squad_file, "--source_language", "en", "--languages", "de,sw",
            "--model", models / "opus-mt-{src}-{tgt}", "--output", output,
            "--engine", "transformers", "--unit", "sentence", "--batch_size", 1,
            "--max_length", 24, *NO_FILTERS]
  killed, full = tmp_path / "killed", tmp_path / "full"
  shards = killed / "_translation" / "shards" / "de"
  process = kill_after_first_commit([*map(str, args(killed)), "--quiet", "--threads", "1"],
                                    shards)
  assert process.returncode == -signal.SIGKILL
  assert not (killed / "de.jsonl").exists()
  committed = {p.name: p.stat().st_mtime_ns for p in shards.glob("batch-*.json")}
  total = len(translate.segments(corpora.read_squad(squad_file, "en"), translate.plan(
      corpora.read_squad(squad_file, "en"), "sentence")))
  assert 0 < len(committed) < total

  assert run_cli(*args(killed)) == 0
  assert run_cli(*args(full)) == 0
  assert {p.name: p.stat().st_mtime_ns for p in shards.glob("batch-*.json")
          if p.name in committed} == committed  # Committed batches were not redone.
  for language in ("en", "de", "sw"):
    assert (read_lines(killed / f"{language}.jsonl")
            == read_lines(full / f"{language}.jsonl")), language
  summary = json.loads((killed / "_translation" / "summary.json").read_text())
  assert summary["languages"]["de"]["texts_translated_this_run"] == total - len(committed)


def test_resuming_with_other_settings_fails_naming_the_setting(translated_dir, squad_file,
                                                                models, capsys):
  assert run_cli("--input", squad_file, "--source_language", "en", "--languages", "de",
                 "--model", models / "opus-mt-{src}-{tgt}", "--output", translated_dir,
                 "--engine", "transformers", "--batch_size", 4, "--max_length", 16) == 1
  assert "batch_size=8, now 4" in capsys.readouterr().err


@pytest.mark.parametrize("source, translation, expected", [
    ("Who led the team in sacks?", "Wer führte das Team bei den Sacks an?", None),
    ("Who led the team in sacks?", "   ", "empty"),
    ("Who led the team in sacks?", "Who  led the team in sacks?", "identical"),
    ("Denver Broncos", "Denver Broncos", None),  # Too short to call an untranslated copy.
    ("Who led the team in sacks?", "Wer?", "length_ratio"),
    ("Who led the team in sacks?", "Wer führte " * 10, "length_ratio"),
    ("Who led the team in sacks?", "Wer wer wer wer führte an?", "repetition"),
    ("Who led the team in sacks?", "Wer führte die Stadt die Stadt die Stadt an?", None),
])
def test_each_filter_flags_exactly_its_crafted_failure(source, translation, expected):
  assert translate.rejection(source, translation, "en", "de",
                             translate.FilterConfig()) == expected


def test_length_ratio_scales_chinese_characters_by_density():
  source = "Who led the Panthers in sacks during the season?"
  assert translate.rejection(source, "谁在本赛季带领黑豹队擒杀四分卫？", "en", "zh",
                             translate.FilterConfig()) is None
  assert translate.length_ratio(source, "谁", "en", "zh") < 0.3


def test_repetition_counts_copies_in_a_row_of_words_or_fragments():
  assert translate.longest_repeat("the city of the city of the city of the city of") == 4
  assert translate.longest_repeat("waywaywayway") == 4
  assert translate.longest_repeat("1,000,000,000,000 people") == 1  # Digits are not words.
  assert translate.longest_repeat("") == 0


def write_jsonl(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


def test_summary_counts_dropped_records_per_filter_and_lists_missing_ids(tmp_path):
  records = [{"id": f"q{i}", "lang": "en", "question": f"Which city hosted game number {i}?",
              "passage": f"Game number {i} was played in a large stadium near the river."}
             for i in range(8)]
  crafted = {"Which city hosted game number 1?": "",
             "Game number 2 was played in a large stadium near the river.":
                 "Game number 2 was played in a large stadium near the river.",
             "Which city hosted game number 3?": "Welche?",
             "Game number 4 was played in a large stadium near the river.": "Spiel " * 9}
  pairs = translate.read_input(write_jsonl(tmp_path / "in.jsonl", records), "en")

  def make_translator(target):
    def fake(texts):  # Crafted failures in German only; a plausible rewrite otherwise.
      return [crafted.get(t, f"{target}: {t[::-1]}") if target == "de" else f"fr: {t[::-1]}"
              for t in texts]
    return fake

  summary = translate.translate_corpus(pairs, "en", ["de", "fr"], tmp_path / "out",
                                       make_translator, batch_size=3, show_progress=False)
  assert summary["languages"]["de"]["dropped"] == {
      "empty": 1, "identical": 1, "length_ratio": 1, "repetition": 1}
  assert summary["languages"]["de"]["records_written"] == 4
  assert summary["languages"]["fr"]["dropped"] == dict.fromkeys(translate.FILTERS, 0)
  assert summary["missing_pair_ids"] == {f"q{i}": ["de"] for i in (1, 2, 3, 4)}
  assert [r["id"] for r in read_lines(tmp_path / "out" / "de.jsonl")] == ["q0", "q5", "q6", "q7"]
  assert json.loads((tmp_path / "out" / "_translation" / "summary.json").read_text()) == summary


def test_sentence_mode_answer_sentence_is_the_translated_source_answer_sentence(tmp_path,
                                                                                 squad_file):
  pairs = corpora.read_squad(squad_file, "en")
  tag = lambda text: f"<de {text[::-1]}>"  # noqa: E731
  translate.translate_corpus(pairs, "en", ["de"], tmp_path, lambda _: lambda ts: list(map(tag, ts)),
                             unit="sentence", batch_size=5, show_progress=False)
  output = {r["id"]: r for r in read_lines(tmp_path / "de.jsonl")}
  for pair in pairs:
    record = output[pair.pair_id]
    assert record["answer_sentence"] == tag(pair.answer_sentence.strip())
    assert record["question"] == tag(pair.question)
    assert record["answer_sentence"] in record["passage"]
    assert record["passage"].startswith("<de ") and record["passage"].count("<de ") > 1


def test_passage_parts_keep_each_answer_sentence_whole():
  passage = "Dr. Smith arrived. He left at 5 p.m. on Monday. Then rain fell."
  parts = translate.passage_parts(passage, ["He left at 5 p.m. on Monday."], "sentence")
  assert "He left at 5 p.m. on Monday." in parts and " ".join(parts) == passage
  assert translate.passage_parts(passage, [], "passage") == (passage,)


def test_batches_are_sorted_by_length_and_deterministic():
  texts = ["ccc", "a", "bb", "dddd", "e"]
  assert translate.batches(texts, 2) == [["a", "e"], ["bb", "ccc"], ["dddd"]]


def test_nllb_codes_and_unknown_languages_are_named(models):
  assert mt_engines.nllb_code("de") == "deu_Latn" and mt_engines.nllb_code("zh") == "zho_Hans"
  with pytest.raises(translate.TranslateError, match="'xx'"):
    mt_engines.nllb_code("xx")
  with pytest.raises(translate.TranslateError, match="no language 'qq'"):
    translate.load_translator(str(models / "m2m100"), "en", "qq", "transformers")
  with pytest.raises(translate.TranslateError, match="into 'de', not 'sw'"):
    translate.load_translator(str(models / "opus-mt-en-de"), "en", "sw", "transformers")


TEXTS = ["Who led the Panthers in sacks?", "The Panthers defense gave up just 308 points.",
         "Denver beat Carolina."]


@pytest.mark.parametrize("model", ["opus-mt-en-de", "m2m100", "nllb"])
def test_ctranslate2_float32_translates_as_transformers_generate(models, model, tmp_path):
  pytest.importorskip("ctranslate2")
  options = dict(max_length=10, cache_dir=tmp_path, threads=1)
  reference = translate.load_translator(str(models / model), "en", "de", "transformers",
                                        **options)(TEXTS)
  assert translate.load_translator(str(models / model), "en", "de", "ctranslate2",
                                   **options)(TEXTS) == reference
  assert all(t and not re.search(r"__\w+__|[a-z]{3}_[A-Z][a-z]{3}", t) for t in reference)


def test_ctranslate2_int8_m2m100_cli_writes_every_language(tmp_path, squad_file, models):
  pytest.importorskip("ctranslate2")
  assert run_cli("--input", squad_file, "--source_language", "en", "--languages", "de,zh",
                 "--model", models / "m2m100", "--output", tmp_path, "--engine", "ctranslate2",
                 "--quantization", "int8", "--unit", "sentence", "--max_length", 12,
                 "--filters", "empty") == 0
  summary = json.loads((tmp_path / "_translation" / "summary.json").read_text())
  corpus = corpora.load_parallel_corpus(tmp_path)
  for language in ("de", "zh"):
    kept = summary["languages"][language]["records_written"]
    assert kept + summary["languages"][language]["dropped"]["empty"] == 20
    assert len(corpus.pairs.get(language, {})) == kept
  converted = [p.name for p in (tmp_path / "_translation" / "ct2").iterdir()]
  assert len(converted) == 1 and converted[0].endswith("-int8")  # One conversion serves both.
