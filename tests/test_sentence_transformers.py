"""The real all-MiniLM-L6-v2 (unpacked from its package) read as sentence-transformers reads it:
its lengths, prompts and modules; a folder setting hybridir cannot honour refused in one line; a
fine-tune of a few steps from it and the export's round trip through sentence-transformers."""
import json
import os
import shutil

import numpy as np
import pytest

import hybridir
from hybridir.models import dual_encoder
from hybridir.training import importers
from hybridir.training import sentence_transformers_folder as st_folder

sentence_transformers = pytest.importorskip("sentence_transformers")

SHORT = ["Who led the Panthers in sacks?", "Wer führte die Panthers bei den Sacks an?",
         "谁在擒杀方面领先黑豹队？", "x", "  Spaces   and ÜNÏCÖDÉ  "]
# About 600 tokens: past the folder's max_seq_length (256) and the tokenizer.json's baked 128.
LONG = " ".join(f"The Panthers defense gave up just {n} points, ranking sixth in the league."
                for n in range(40))
TEXTS = SHORT + [LONG]


def assert_same_vectors(ours, theirs):
  """Cosine >= 0.99999 row by row and equal norms (rtol 1e-4)."""
  ours, theirs = np.atleast_2d(ours), np.atleast_2d(np.asarray(theirs))
  cosines = np.sum(ours * theirs, -1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs,
                                                                                         axis=-1)
  assert cosines.min() >= 0.99999, cosines
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), np.linalg.norm(theirs, axis=-1),
                             rtol=1e-4)


def loaded(folder: str) -> tuple:
  """(hybridir.load_encoder(folder), SentenceTransformer(folder)) on the CPU."""
  return (hybridir.load_encoder(folder, batch_size=8),
          sentence_transformers.SentenceTransformer(folder, device="cpu"))


@pytest.fixture(scope="module")
def real(minilm_dir):
  return loaded(minilm_dir)


def folder_copy(source: str, destination, edits: dict) -> str:
  """A copy of a model folder (its weights linked) with files {relative path: JSON} written."""
  shutil.copytree(source, destination, ignore=shutil.ignore_patterns("*.safetensors"))
  for name in os.listdir(source):
    if name.endswith(".safetensors"):
      os.symlink(os.path.join(source, name), os.path.join(destination, name))
  for name, content in edits.items():
    os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
    with open(os.path.join(destination, name), "w") as f:
      json.dump(content, f)
  return str(destination)


def test_real_checkpoint_reads_its_lengths_modules_and_prompts(real):
  encoder, reference = real
  assert encoder.max_length == reference.max_seq_length == 256
  assert (encoder.model.pooling, encoder.model.normalize) == ("mean", True)
  assert encoder.prompts == reference.prompts and encoder.default_prompt_name is None
  ids = reference[0].preprocess(TEXTS)["input_ids"]
  for ours, text, theirs in zip(encoder.tokenize(TEXTS, None), TEXTS, ids):
    assert ours == [i for i in theirs.tolist() if i != 0], text
  assert len(encoder.tokenize([LONG], None)[0]) == 256


def test_real_checkpoint_encodes_short_and_long_texts_like_sentence_transformers(real):
  encoder, reference = real
  assert_same_vectors(encoder.encode(TEXTS), reference.encode(TEXTS))
  assert_same_vectors(encoder.encode(LONG), reference.encode(LONG))


def test_batch_size_changes_no_vector(real):
  encoder, reference = real
  expected = reference.encode(TEXTS, batch_size=2)
  for batch_size in (1, 3):
    assert_same_vectors(encoder.encode(TEXTS, batch_size=batch_size), expected)


def test_max_length_argument_cuts_as_max_seq_length_does(minilm_dir, real):
  reference = real[1]
  encoder = hybridir.load_encoder(minilm_dir, max_length=64)
  reference.max_seq_length = 64
  try:
    expected = reference.encode(TEXTS)
  finally:
    reference.max_seq_length = 256
  assert_same_vectors(encoder.encode(TEXTS), expected)


def test_prompts_given_to_load_encoder_win_over_the_folders(minilm_dir, real):
  encoder = hybridir.load_encoder(minilm_dir, prompts={"query": "q: "}, default_prompt_name="query")
  assert encoder.prompts == {"query": "q: ", "document": ""}
  np.testing.assert_allclose(encoder.encode(SHORT), real[0].encode(SHORT, prompt="q: "),
                             atol=1e-6)


PROMPTS = {"query": "query: ", "passage": "passage: ", "classification": "Classify this: "}


@pytest.fixture(scope="module")
def prompted_folder(minilm_dir, tmp_path_factory):
  """The real folder with prompts, a default prompt and a query length of its own."""
  return folder_copy(minilm_dir, tmp_path_factory.mktemp("prompted") / "minilm", {
      "config_sentence_transformers.json": {"prompts": PROMPTS,
                                            "default_prompt_name": "classification"},
      "sentence_bert_config.json": {"max_seq_length": 256, "do_lower_case": False,
                                    "query_length": 12}})


@pytest.fixture(scope="module")
def prompted(prompted_folder):
  return loaded(prompted_folder)


@pytest.mark.parametrize("call,options", [
    ("encode", {}), ("encode", {"prompt_name": "query"}), ("encode", {"prompt_name": "passage"}),
    ("encode", {"prompt": "Represent this: "}), ("encode", {"task": "query"}),
    ("encode_query", {}), ("encode_document", {}), ("encode_query", {"prompt_name": "passage"})],
    ids=["default", "query", "passage", "prompt", "task", "encode_query", "encode_document",
         "encode_query_named"])
def test_prompted_calls_mean_what_they_mean_in_sentence_transformers(prompted, call, options):
  encoder, reference = prompted
  ours = {"encode": encoder.encode, "encode_query": encoder.encode_queries,
          "encode_document": encoder.encode_corpus}[call]
  assert_same_vectors(ours(TEXTS, **options), getattr(reference, call)(TEXTS, **options))


def test_unknown_prompt_name_is_refused_as_sentence_transformers_does(prompted):
  with pytest.raises(ValueError, match="'answer' is not one of this encoder's prompts"):
    prompted[0].encode(SHORT, prompt_name="answer")


MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling"}]
TANH = "torch.nn.modules.activation.Tanh"
# (edits of the real folder, the file the one-line refusal names, the setting it names)
REFUSED = {
    "weightedmean": ({"1_Pooling/config.json": {"pooling_mode": "weightedmean"}},
                     "1_Pooling/config.json", 'pooling_mode="weightedmean"'),
    "two_modes": ({"1_Pooling/config.json": {"pooling_mode": ["cls", "mean"]}},
                  "1_Pooling/config.json", 'pooling_mode=["cls", "mean"]'),
    "prompt_excluded": ({"1_Pooling/config.json": {"pooling_mode": "mean",
                                                   "include_prompt": False}},
                        "1_Pooling/config.json", "include_prompt=false"),
    "unknown_module": ({"modules.json": MODULES + [{
        "idx": 2, "name": "2", "path": "2_LayerNorm",
        "type": "sentence_transformers.models.LayerNorm"}]},
                       "modules.json", 'modules[2].type="sentence_transformers.models.LayerNorm"'),
    "dense_after_mean": ({"modules.json": MODULES + [{
        "idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
                          "2_Dense/config.json": {"in_features": 384, "out_features": 384,
                                                  "bias": True, "activation_function": TANH}},
                         "2_Dense/config.json", 'pooling="mean"'),
    "projecting_dense": ({"modules.json": MODULES + [{
        "idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
                          "1_Pooling/config.json": {"pooling_mode": "cls"},
                          "2_Dense/config.json": {"in_features": 384, "out_features": 128,
                                                  "bias": True, "activation_function": TANH}},
                         "2_Dense/config.json", "out_features=128"),
    "document_length": ({"sentence_bert_config.json": {"max_seq_length": 256,
                                                       "document_length": 128}},
                        "sentence_bert_config.json", "document_length=128"),
    "processor_kwargs": ({"sentence_bert_config.json": {
        "max_seq_length": 256, "processor_kwargs": {"padding_side": "left"}}},
                         "sentence_bert_config.json", 'processor_kwargs={"padding_side": "left"}'),
    "unknown_setting": ({"sentence_bert_config.json": {"max_seq_length": 256, "something": 1}},
                        "sentence_bert_config.json", "something=1"),
    "truncate_dim": ({"config_sentence_transformers.json": {"truncate_dim": 128}},
                     "config_sentence_transformers.json", "truncate_dim=128"),
    "missing_default_prompt": ({"config_sentence_transformers.json": {
        "default_prompt_name": "query_v2"}},
                               "config_sentence_transformers.json",
                               'default_prompt_name="query_v2"'),
    "left_truncation": ({"tokenizer_config.json": {"model_max_length": 512,
                                                   "truncation_side": "left"}},
                        "tokenizer_config.json", 'truncation_side="left"'),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_setting_hybridir_cannot_honour_is_refused_in_one_line(minilm_dir, tmp_path, case):
  edits, named_file, named_setting = REFUSED[case]
  folder = folder_copy(minilm_dir, tmp_path / "minilm", edits)
  with pytest.raises(st_folder.UnsupportedSettingError) as error:
    hybridir.load_encoder(folder)
  message = str(error.value)
  assert "\n" not in message, message
  assert message.startswith(f"{os.path.join(folder, named_file)}: {named_setting} is not "
                            "supported ("), message


def test_run_model_that_contradicts_the_folder_is_refused(minilm_dir):
  model, _ = importers.load_hf(minilm_dir)
  other = dual_encoder.DualEncoder(model.encoder_config, pooling="first_dense")
  with pytest.raises(ValueError, match=r"modules.json gives pooling='mean' \(the run's model: "
                                       r"'first_dense'\).*POOLING"):
    importers.Pretrained(minilm_dir)(other, None)


FINE_TUNE, RUN_NAME = "minilm_fine_tune", "minilm_hybrid_run"


@pytest.fixture(scope="module")
def fine_tuned(minilm_dir, data_dir, tmp_path_factory):
  """A 2-step training run from the real folder (train.gin with all_minilm_l6.gin, INIT_CHECKPOINT
  the folder, SPM_PATH its tokenizer.json), its export and that export's Hugging Face folder."""
  import tasks
  from hybridir.export import exporter
  from hybridir.export import hf_export
  from hybridir import gin_run
  folder = tmp_path_factory.mktemp("fine_tune")
  bindings = [f"MODEL_DIR = '{folder / RUN_NAME}'", f"CORPUS_DIR = '{data_dir / 'xquad-r'}'",
              f"SPM_PATH = '{minilm_dir}/tokenizer.json'",
              f"INIT_CHECKPOINT = '{minilm_dir}'", f"CORPUS_NAME = '{FINE_TUNE}'",
              f"MIXTURE_OR_TASK_NAME = '{FINE_TUNE}_hybrid'", "LANGUAGES = ['en', 'de']",
              "TASK_FEATURE_LENGTHS = {'query': 16, 'passage': 32}", "BATCH_SIZE = 8",
              "TRAIN_STEPS = 2", "CHECKPOINT_PERIOD = 2", "WARMUP_STEPS = 1",
              "LEARNING_RATE = 1e-5", "DROPOUT_RATE = 0.0", "KERNELS = 'cpu'"]
  try:
    result = gin_run.run_config(
        ["gin_configs/runs/train.gin", "gin_configs/models/all_minilm_l6.gin"], bindings)
  finally:
    tasks.unregister_parallel_qa(FINE_TUNE)
  artifact = exporter.export_from_training_checkpoint(str(folder / RUN_NAME),
                                                    str(folder / "artifact"))
  assert hf_export.main(["--encoder", artifact, "--output", str(folder / "hf")]) == 0
  return result, artifact, str(folder / "hf")


@pytest.mark.slow
def test_fine_tune_starts_from_the_pretrained_weights_pooling_and_tokenizer(fine_tuned, real):
  (result, artifact, _), encoder = fine_tuned, real[0]
  assert len(result.history) == 2 and np.isfinite([h["loss"] for h in result.history]).all()
  tuned = hybridir.load_encoder(artifact)
  assert (tuned.model.pooling, tuned.model.normalize) == ("mean", True)
  assert tuned.tokenize(SHORT, None, prefix="") == encoder.tokenize(SHORT, None)
  # Two small steps move the pretrained vectors a little; a random start would be unrelated.
  cosines = np.sum(tuned.encode(SHORT, prompt="") * encoder.encode(SHORT), -1)
  assert cosines.min() > 0.98, cosines


@pytest.fixture(scope="module")
def round_trip(fine_tuned):
  """The fine-tuned artifact and its Hugging Face folder, loaded by hybridir, and that folder
  loaded by sentence-transformers."""
  _, artifact, folder = fine_tuned
  return (hybridir.load_encoder(artifact), *loaded(folder))


@pytest.mark.parametrize("call,options", [
    ("encode", {}), ("encode", {"prompt_name": "document"}), ("encode_query", {}),
    ("encode_document", {})], ids=["default", "document", "encode_query", "encode_document"])
@pytest.mark.slow
def test_fine_tuned_export_round_trips_through_sentence_transformers(round_trip, call, options):
  """hybridir's artifact, hf_export's folder loaded by hybridir and by sentence-transformers give
  the same vectors for the same call: `encode(texts)` adds the query prompt in each, and queries
  are cut at the trained query length (16) in encode_query."""
  *encoders, reference = round_trip
  expected = getattr(reference, call)(TEXTS, **options)
  for ours in encoders:
    method = {"encode": ours.encode, "encode_query": ours.encode_queries,
              "encode_document": ours.encode_corpus}[call]
    assert_same_vectors(method(TEXTS, **options), expected)


@pytest.mark.slow
def test_fine_tuned_export_states_its_prompts_and_lengths(round_trip):
  artifact, _, reference = round_trip
  assert reference.prompts == {"query": "Query: ", "document": "Passage: "} == artifact.prompts
  assert reference.default_prompt_name == artifact.default_prompt_name == "query"
  assert (reference.max_seq_length, reference[0].query_length) == (32, 16) == (
      artifact.max_length, artifact.query_max_length)


@pytest.mark.slow
def test_fine_tuned_export_card_states_the_run_and_its_sample_runs_as_written(fine_tuned):
  import re
  import subprocess
  import sys
  from hybridir.export import model_card
  _, artifact, folder = fine_tuned
  card = open(os.path.join(folder, "README.md")).read()
  assert card.splitlines()[5] == f"# {RUN_NAME}"
  assert "/tokenizer.json'` |" in card  # SPM_PATH, which config.gin wraps, read whole.
  for stated in ("step 2", "| query length (query_length) | 16 |",
                 "| passage length (max_seq_length) | 32 |", "| query prompt | 'Query: ' |",
                 "| LANGUAGES | `['en', 'de']` |", "| TRAIN_STEPS | `2` |",
                 "| BATCH_SIZE | `8` |", "`AutoModel` builds the same class",
                 f"transformers.BertModel.from_pretrained('{folder}')",
                 "`encode(texts)` with no prompt adds the default prompt `query` ('Query: ')",
                 "None recorded with the run"):
    assert stated in card, stated
  sample = re.search(r"```python\n(.*?)```", card, re.S).group(1)
  result = subprocess.run([sys.executable, "-c", sample], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0 and "tensor([[" in result.stdout, result.stderr[-2000:]
  # An evaluation summary (eval_run's) becomes the card's table.
  summary = os.path.join(folder, "..", "summary.json")
  with open(summary, "w") as f:
    json.dump({"xquad_r": {"monolingual/map": 0.5, "cross_lingual/map": 0.25},
               "degradation": {}}, f)
  encoder = hybridir.load_encoder(artifact)
  run = model_card.training_run(artifact)
  table = model_card.model_card(encoder, json.load(open(os.path.join(folder, "config.json"))),
                                folder, 32, run, model_card.evaluation_rows(run, summary))
  assert "| dataset | setting | map |" in table and "| xquad_r | monolingual | 0.5000 |" in table
