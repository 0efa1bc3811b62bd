"""Machine-translation engines: a Hugging Face seq2seq checkpoint (MarianMT, M2M100, NLLB) run
through CTranslate2 (converted once, int8 optional) or transformers `generate`, as a function
from a batch of texts to their translations."""
import hashlib
import logging
import os
import pathlib
import tempfile
from typing import Callable, Sequence

from hybridir.data import corpora

ENGINES = ("ctranslate2", "transformers")
Translator = Callable[[Sequence[str]], list[str]]

NLLB_CODES = dict(code.split(":") for code in (
    "af:afr_Latn am:amh_Ethi ar:arb_Arab az:azj_Latn be:bel_Cyrl bg:bul_Cyrl bn:ben_Beng "
    "ca:cat_Latn cs:ces_Latn cy:cym_Latn da:dan_Latn de:deu_Latn el:ell_Grek en:eng_Latn "
    "es:spa_Latn et:est_Latn eu:eus_Latn fa:pes_Arab fi:fin_Latn fr:fra_Latn ga:gle_Latn "
    "gl:glg_Latn gu:guj_Gujr ha:hau_Latn he:heb_Hebr hi:hin_Deva hr:hrv_Latn hu:hun_Latn "
    "hy:hye_Armn id:ind_Latn ig:ibo_Latn is:isl_Latn it:ita_Latn ja:jpn_Jpan jv:jav_Latn "
    "ka:kat_Geor kk:kaz_Cyrl km:khm_Khmr kn:kan_Knda ko:kor_Hang lo:lao_Laoo lt:lit_Latn "
    "lv:lvs_Latn mk:mkd_Cyrl ml:mal_Mlym mr:mar_Deva ms:zsm_Latn my:mya_Mymr ne:npi_Deva "
    "nl:nld_Latn no:nob_Latn pa:pan_Guru pl:pol_Latn pt:por_Latn ro:ron_Latn ru:rus_Cyrl "
    "si:sin_Sinh sk:slk_Latn sl:slv_Latn so:som_Latn sr:srp_Cyrl sv:swe_Latn sw:swh_Latn "
    "ta:tam_Taml te:tel_Telu th:tha_Thai tl:tgl_Latn tr:tur_Latn uk:ukr_Cyrl ur:urd_Arab "
    "uz:uzn_Latn vi:vie_Latn yo:yor_Latn zh:zho_Hans zu:zul_Latn").split())


class TranslateError(ValueError):
  """A setting, model or earlier partial output cannot be used."""


def nllb_code(language: str) -> str:
  """The NLLB-200 code of an ISO 639-1 code, e.g. 'de' -> 'deu_Latn'."""
  if language not in NLLB_CODES:
    raise TranslateError(f"no NLLB code known for language {language!r}; known: "
                         f"{', '.join(sorted(NLLB_CODES))}")
  return NLLB_CODES[language]


def _load_tokenizer(path: str, source: str, target: str):
  """(tokenizer, text prefix, target token, ids to drop from outputs) for Marian/M2M100/NLLB."""
  import transformers  # Heavy: imported only to translate.
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  kind = type(tokenizer).__name__
  if kind.startswith("M2M100"):
    for language in (source, target):
      if language not in tokenizer.lang_code_to_id:
        raise TranslateError(f"{path}: M2M100 model has no language {language!r}")
    tokenizer.src_lang = source  # Its language tokens are not special to decode: drop them.
    return (tokenizer, "", tokenizer.get_lang_token(target),
            set(tokenizer.lang_token_to_id.values()))
  if kind.startswith("Nllb"):
    tokenizer.src_lang = nllb_code(source)
    vocab = tokenizer.get_vocab()
    return tokenizer, "", nllb_code(target), {vocab[c] for c in NLLB_CODES.values() if c in vocab}
  if kind.startswith("Marian"):
    codes = tokenizer.supported_language_codes
    if codes:  # One model, many targets: the source text starts with >>tgt<<.
      if f">>{target}<<" not in codes:
        raise TranslateError(f"{path}: Marian model has no target code >>{target}<<; it has "
                             f"{', '.join(codes[:20])}")
      return tokenizer, f">>{target}<< ", None, set()
    declared = getattr(tokenizer, "target_lang", None)
    if declared and declared != target:
      raise TranslateError(f"{path}: Marian model translates into {declared!r}, not {target!r}; "
                           "give --model a template such as models/opus-mt-{src}-{tgt}")
    return tokenizer, "", None, set()
  raise TranslateError(f"{path}: unsupported tokenizer {kind} (expected Marian, M2M100 or NLLB)")


def _convert_ctranslate2(path: str, cache_dir: pathlib.Path, quantization: str) -> pathlib.Path:
  """The CTranslate2 copy of a Hugging Face checkpoint, converted once into `cache_dir`."""
  import ctranslate2
  digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:10]
  output = cache_dir / f"{pathlib.Path(path).name}-{digest}-{quantization}"
  if (output / "model.bin").exists():
    return output

  class Converter(ctranslate2.converters.TransformersConverter):
    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
      tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
      if hasattr(tokenizer, "lang_token_to_id"):  # transformers 5 hides M2M100's language tokens.
        base = tokenizer.get_vocab
        tokenizer.get_vocab = lambda: {**base(), **tokenizer.lang_token_to_id}
      return tokenizer

  cache_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
    Converter(path).convert(os.path.join(scratch, "model"), quantization=quantization, force=True)
    os.replace(os.path.join(scratch, "model"), output)
  return output


def model_folder(model: str, source: str, target: str) -> str:
  """The model folder for source -> target (`model`, or its {src}/{tgt} template filled)."""
  path = model.format(src=source, tgt=target)
  if not os.path.isdir(path):
    raise TranslateError(f"--model: no model folder {path!r} for {source}->{target}")
  return path


def load_translator(model: str, source: str, target: str, engine: str = "ctranslate2",
                    quantization: str = "float32", beam_size: int = 1, max_length: int = 256,
                    device: str = "auto", cache_dir: corpora.PathLike = "ct2_cache",
                    threads: int = 0) -> Translator:
  """A function translating a batch of texts from `source` to `target`.

  `model` is a folder or a template holding {src} and {tgt}; `threads` 0 is the library default.
  """
  path = model_folder(model, source, target)
  if engine not in ENGINES or quantization not in ("int8", "float32"):
    raise TranslateError(f"--engine must be one of {ENGINES} and --quantization int8 or float32, "
                         f"found {engine!r}, {quantization!r}")
  tokenizer, text_prefix, target_token, hidden = _load_tokenizer(path, source, target)
  limit = min(tokenizer.model_max_length, 512)

  def encode(texts, **options):
    inputs = tokenizer([text_prefix + t for t in texts], truncation=True, max_length=limit,
                       **options)
    if any(len(ids) >= limit for ids in inputs["input_ids"]):
      logging.getLogger(__name__).warning("texts cut at %d tokens; --unit sentence avoids it",
                                          limit)
    return inputs

  def decode(ids):
    ids = [i for i in ids if i not in hidden]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()

  if engine == "ctranslate2":
    import ctranslate2
    if device == "auto":
      device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
    translator = ctranslate2.Translator(
        str(_convert_ctranslate2(path, pathlib.Path(cache_dir), quantization)), device=device,
        compute_type=quantization, intra_threads=threads)

    def translate_ctranslate2(texts):
      tokens = [tokenizer.convert_ids_to_tokens(i) for i in encode(texts)["input_ids"]]
      prefix = [[target_token]] * len(texts) if target_token else None
      results = translator.translate_batch(tokens, target_prefix=prefix, beam_size=beam_size,
                                           max_decoding_length=max_length)
      skip = 1 if target_token else 0
      return [decode(tokenizer.convert_tokens_to_ids(r.hypotheses[0][skip:])) for r in results]
    return translate_ctranslate2

  if quantization != "float32":
    raise TranslateError("--quantization int8 needs --engine ctranslate2")
  import torch
  import transformers
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  if threads:
    torch.set_num_threads(threads)
  network = transformers.AutoModelForSeq2SeqLM.from_pretrained(path).to(device).eval()
  network.generation_config.forced_eos_token_id = None  # Cut at max_length as CTranslate2 does.
  forced = tokenizer.convert_tokens_to_ids(target_token) if target_token else None
  leading = {network.config.decoder_start_token_id, forced}

  def translate_transformers(texts):
    inputs = encode(texts, padding=True, return_tensors="pt").to(device)
    with torch.inference_mode():
      output = network.generate(**inputs, num_beams=beam_size, do_sample=False,
                                max_new_tokens=max_length, forced_bos_token_id=forced)
    rows = [row.tolist() for row in output.cpu()]
    return [decode(row[next((i for i, t in enumerate(row) if t not in leading), len(row)):])
            for row in rows]
  return translate_transformers
