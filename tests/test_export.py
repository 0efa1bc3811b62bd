"""Exported artifacts and Hugging Face exports encode exactly like the parameters they came from."""
import dataclasses
import json
import os
import shutil

import flax
import jax
import numpy as np
import optax
import pytest
import transformers

import hybridir
from hybridir.data import text
from hybridir.export import artifacts
from hybridir.export import encoder as encoder_lib
from hybridir.export import exporter
from hybridir.export import hf_export
from hybridir.models import dual_encoder
from hybridir.models import families
from hybridir.models import t5
from hybridir.models import xlmr
from hybridir.training import checkpoints
from hybridir.training import importers
from hybridir.training import run_dir
from hybridir.training import train_step
from tests import reference_models as ref
from tests.test_load_encoder import TEXTS, spm_models  # noqa: F401 (a fixture)

CONFIGS = {
    "t5": t5.T5Config(vocab_size=300, emb_dim=16, num_layers=2, num_heads=3, head_dim=8,
                      mlp_dim=24, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, dropout_rate=0.0),
    "xlmr": xlmr.XLMRConfig(vocab_size=302, emb_dim=24, num_layers=2, num_heads=4, head_dim=6,
                            mlp_dim=40, max_position_embeddings=130, dropout_rate=0.0,
                            attention_dropout_rate=0.0),
}


def random_params(model, seed=0):
  """Random float32 params of the model's shapes; norm scales near one, nothing trivially 0 or 1."""
  rng = np.random.default_rng(seed)
  shapes = flax.traverse_util.flatten_dict(importers.abstract_params(model), sep="/")
  return flax.traverse_util.unflatten_dict({
      path: (path.endswith("/scale") + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
      for path, x in shapes.items()}, sep="/")


def reference_encoder(model, params, spm_path, batch_size=8, text_format=None):
  vocabulary = families.vocabulary(model.encoder_config.family, spm_path)
  return encoder_lib.Encoder(model, params, vocabulary, 128, batch_size,
                            text_format or text.TextFormat())


def flat(params):
  return flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep="/")


def assert_params_equal(actual, expected):
  actual, expected = flat(actual), flat(expected)
  assert sorted(actual) == sorted(expected)
  for path in expected:
    np.testing.assert_array_equal(actual[path], expected[path], err_msg=path)


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_float32_artifact_encodes_like_the_exported_params(tmp_path, spm_models, family):
  model = dual_encoder.DualEncoder(CONFIGS[family])
  params = random_params(model)
  artifact = artifacts.export_encoder(str(tmp_path / "artifact"), model, params,
                                      spm_models[family], max_length=128)
  expected = reference_encoder(model, params, spm_models[family]).encode(TEXTS)
  np.testing.assert_allclose(hybridir.load_encoder(artifact).encode(TEXTS), expected, atol=1e-6)


def test_bfloat16_artifact_stores_bfloat16_and_encodes_closely(tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  params = random_params(model)
  artifact = artifacts.export_encoder(str(tmp_path / "artifact"), model, params, spm_models["t5"],
                                      dtype="bfloat16", max_length=128)
  stored = checkpoints.restore_numpy(os.path.join(artifact, artifacts.PARAMS_DIR))
  assert {str(x.dtype) for x in jax.tree.leaves(stored)} == {"bfloat16"}
  expected = reference_encoder(model, params, spm_models["t5"]).encode(TEXTS)
  embeddings = hybridir.load_encoder(artifact).encode(TEXTS)
  assert (np.sum(embeddings * expected, axis=-1) > 0.999).all()


def test_artifact_is_self_contained_and_described_by_its_manifest(tmp_path, spm_models):
  spm_copy = shutil.copy(spm_models["xlmr"], tmp_path / "vocab.model")
  model = dual_encoder.DualEncoder(CONFIGS["xlmr"], pooling="first", projection_dim=8,
                                   normalize=False, shared_towers=False)
  params = random_params(model)
  artifact = artifacts.export_encoder(str(tmp_path / "artifact"), model, params, str(spm_copy),
                                      max_length=64, extra_metadata={"run": "tiny"})
  expected = reference_encoder(model, params, spm_copy).encode(TEXTS[:3], "passage")
  os.remove(spm_copy)
  with open(os.path.join(artifact, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["family"] == "xlmr" and manifest["encoder_config"]["emb_dim"] == 24
  assert (manifest["pooling"], manifest["normalize"], manifest["projection_dim"],
          manifest["shared_towers"]) == ("first", False, 8, False)
  assert manifest["parameter_count"] == sum(x.size for x in jax.tree.leaves(params))
  assert manifest["vocabulary"]["source"] == str(spm_copy)
  assert manifest["metadata"] == {"run": "tiny"} and manifest["param_dtype"] == "float32"
  encoder = hybridir.load_encoder(artifact)
  assert encoder.max_length == 64 and encoder.dimension == 8
  np.testing.assert_allclose(encoder.encode(TEXTS[:3], "passage"), expected, atol=1e-6)


def test_loading_an_artifact_with_contradicting_options_says_which(tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  artifact = artifacts.export_encoder(str(tmp_path / "a"), model, random_params(model),
                                      spm_models["t5"])
  with pytest.raises(ValueError, match="pooling='mean', not 'first'"):
    hybridir.load_encoder(artifact, pooling="first")


def test_loaded_artifact_applies_the_prefixes_and_passage_unit_its_manifest_records(tmp_path,
                                                                                   spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  params = random_params(model)
  custom = text.TextFormat("Frage: ", "Antwort: ", "sentence_with_context")
  artifact = artifacts.export_encoder(str(tmp_path / "a"), model, params, spm_models["t5"],
                                      max_length=128, text_format=custom)
  assert artifacts.read_manifest(artifact)["text_format"] == {
      "query_prefix": "Frage: ", "passage_prefix": "Antwort: ",
      "passage_unit": "sentence_with_context"}
  encoder = hybridir.load_encoder(artifact)
  bare = reference_encoder(model, params, spm_models["t5"], text_format=text.UNFORMATTED)
  np.testing.assert_allclose(encoder.encode(TEXTS[:2], "query"),
                             bare.encode([f"Frage: {t}" for t in TEXTS[:2]], "query"), atol=1e-6)
  np.testing.assert_allclose(encoder.encode(TEXTS[:2], "passage", contexts=TEXTS[2:4]),
                             bare.encode([f"Antwort: {a} {b}" for a, b in zip(TEXTS, TEXTS[2:4])],
                                         "passage"), atol=1e-6)


def test_artifact_without_a_text_format_encodes_bare_texts_as_before(tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  params = random_params(model)
  artifact = artifacts.export_encoder(str(tmp_path / "a"), model, params, spm_models["t5"],
                                      max_length=128)
  manifest = artifacts.read_manifest(artifact)
  del manifest["text_format"]
  artifacts._write_manifest(artifact, manifest)
  encoder = hybridir.load_encoder(artifact)
  assert encoder.text_format == text.UNFORMATTED
  bare = reference_encoder(model, params, spm_models["t5"], text_format=text.UNFORMATTED)
  np.testing.assert_allclose(encoder.encode(TEXTS, "passage", contexts=TEXTS),
                             bare.encode(TEXTS, "passage"), atol=1e-6)
  with pytest.raises(ValueError, match="exported with text_format="):
    hybridir.load_encoder(artifact, text_format=text.TextFormat())


def test_artifact_from_before_kernels_were_recorded_loads_with_the_portable_layers(tmp_path,
                                                                                   spm_models):
  model = dual_encoder.DualEncoder(dataclasses.replace(CONFIGS["xlmr"], kernels="cpu"))
  params = random_params(model)
  artifact = artifacts.export_encoder(str(tmp_path / "a"), model, params, spm_models["xlmr"],
                                      max_length=128)
  manifest = artifacts.read_manifest(artifact)
  assert manifest["encoder_config"].pop("kernels") == "cpu"
  artifacts._write_manifest(artifact, manifest)
  encoder = hybridir.load_encoder(artifact)
  assert encoder.model.encoder_config == CONFIGS["xlmr"]  # kernels="portable", the default.
  np.testing.assert_allclose(encoder.encode(TEXTS, "passage"),
                             reference_encoder(model, params, spm_models["xlmr"]).encode(
                                 TEXTS, "passage"), atol=1e-5)


def test_run_description_from_before_kernels_were_recorded_builds_the_portable_model():
  description = json.loads(json.dumps(run_dir.model_description(
      dual_encoder.DualEncoder(dataclasses.replace(CONFIGS["t5"], kernels="cpu")))))
  del description["encoder_config"]["kernels"]
  model = run_dir.model_from_description(description, "encoder.json")
  assert model.encoder_config == CONFIGS["t5"]


def test_params_that_do_not_fit_the_model_are_refused_before_writing(tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  params = random_params(dual_encoder.DualEncoder(CONFIGS["t5"], projection_dim=4))
  with pytest.raises(importers.CheckpointMismatchError, match="projection_layer/kernel"):
    artifacts.export_encoder(str(tmp_path / "a"), model, params, spm_models["t5"])
  assert os.listdir(tmp_path) == []


def write_training_checkpoints(model_dir, model, steps):
  """A real training checkpoint per step (TrainState with AdamW state); returns their params."""
  optimizer = optax.adamw(1e-3)
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"),
                                          asynchronous=False)
  saved = {}
  for step in steps:
    params = train_step.initial_params(random_params(model, seed=step), train_step.LossConfig())
    state = train_step.TrainState(np.int32(step), params, optimizer.init(params))
    checkpointer.save(step, state, {"examples_seen": step}, force=True)
    saved[step] = params["model"]
  checkpointer.close()
  return saved


def test_export_from_training_checkpoint_takes_the_latest_or_given_step(
    tmp_path, spm_models, monkeypatch):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  saved = write_training_checkpoints(str(tmp_path / "model"), model, steps=(10, 20))
  latest = exporter.export_from_training_checkpoint(
      str(tmp_path / "model"), str(tmp_path / "latest"), model, spm_models["t5"])
  monkeypatch.chdir(tmp_path)  # Relative paths, as `make demo` passes them (orbax needs absolute).
  first = exporter.export_from_training_checkpoint("model", "first", model, spm_models["t5"],
                                                 step=10)
  assert_params_equal(hybridir.load_encoder(latest).params, saved[20])
  assert_params_equal(hybridir.load_encoder(first).params, saved[10])
  assert artifacts.read_manifest(first)["metadata"]["step"] == 10


def test_export_from_training_checkpoint_keeps_the_text_format_and_length_it_was_trained_with(
    tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  model_dir = str(tmp_path / "model")
  custom = text.TextFormat("q: ", "p: ", "sentence")
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"),
                                          asynchronous=False)
  params = train_step.initial_params(random_params(model), train_step.LossConfig())
  state = train_step.TrainState(np.int32(5), params, optax.adamw(1e-3).init(params))
  identity = {"text_format": custom.to_json(), "task_feature_lengths": {"query": 8, "passage": 48}}
  checkpointer.save(5, state, {"step": 5, "identity": identity}, force=True)
  checkpointer.close()
  artifact = exporter.export_from_training_checkpoint(model_dir, str(tmp_path / "out"), model,
                                                    spm_models["t5"])
  encoder = hybridir.load_encoder(artifact)
  assert (encoder.text_format, encoder.max_length, encoder.query_max_length) == (custom, 48, 8)
  long_text = " ".join(["word"] * 100)
  query, passage = (encoder.tokenize([long_text], tower)[0] for tower in ("query", "passage"))
  assert (len(query), len(passage)) == (8, 48)  # Each tower cut at its training length.
  with pytest.raises(ValueError, match="step 5 was trained with"):
    exporter.export_from_training_checkpoint(model_dir, str(tmp_path / "other"), model,
                                           spm_models["t5"], text_format=text.TextFormat())


def test_missing_training_step_lists_the_available_ones(tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  write_training_checkpoints(str(tmp_path / "model"), model, steps=(10,))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5; found steps \[10\]"):
    exporter.export_from_training_checkpoint(str(tmp_path / "model"), str(tmp_path / "out"),
                                           model, spm_models["t5"], step=5)


def test_crashed_export_leaves_no_output_dir(tmp_path, spm_models, monkeypatch):
  def crash(*args):
    raise RuntimeError("disk full")

  monkeypatch.setattr(artifacts, "_write_manifest", crash)
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  with pytest.raises(RuntimeError, match="disk full"):
    artifacts.export_encoder(str(tmp_path / "artifact"), model, random_params(model),
                             spm_models["t5"])
  assert os.listdir(tmp_path) == []


def test_crashed_hf_export_leaves_no_output_dir(tmp_path, spm_models, monkeypatch):
  def crash(*args):
    raise RuntimeError("disk full")

  monkeypatch.setattr(hf_export.fs, "copy_file", crash)
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  with pytest.raises(RuntimeError, match="disk full"):
    hf_export.export_hf(str(tmp_path / "hf"), model, random_params(model), spm_models["t5"])
  assert os.listdir(tmp_path) == []


def test_existing_artifact_is_replaced_only_with_overwrite(tmp_path, spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  output = str(tmp_path / "artifact")
  artifacts.export_encoder(output, model, random_params(model, 1), spm_models["t5"])
  with pytest.raises(FileExistsError, match="overwrite=True"):
    artifacts.export_encoder(output, model, random_params(model, 2), spm_models["t5"])
  artifacts.export_encoder(output, model, random_params(model, 2), spm_models["t5"], overwrite=True)
  assert_params_equal(hybridir.load_encoder(output).params, random_params(model, 2))
  assert os.listdir(tmp_path) == ["artifact"]


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_hf_export_encodes_like_transformers(tmp_path, spm_models, family):
  model = dual_encoder.DualEncoder(CONFIGS[family])
  params = random_params(model)
  output = hf_export.export_hf(str(tmp_path / "hf"), model, params, spm_models[family])
  if family == "t5":
    tokenizer = transformers.T5Tokenizer.from_pretrained(output, extra_ids=0)
    torch_model, info = transformers.MT5EncoderModel.from_pretrained(
        output, output_loading_info=True)
  else:
    tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(output)
    torch_model, info = transformers.XLMRobertaModel.from_pretrained(
        output, add_pooling_layer=False, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  expected = ref.torch_mean_pooled(torch_model.eval(), tokenizer, TEXTS)
  # transformers reads the texts as given: compare bare texts (no prefixes).
  embeddings = reference_encoder(model, params, spm_models[family],
                                 text_format=text.UNFORMATTED).encode(TEXTS)
  assert (np.sum(embeddings * expected, axis=-1) > 0.99999).all()


def test_mt5_export_card_names_the_encoder_class_automodel_does_not_build(tmp_path, spm_models):
  """config.json's architectures and the card name MT5EncoderModel; the card's line for AutoModel
  users says what AutoModel really builds from the export."""
  from hybridir.export import model_card
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  params = random_params(model)
  output = hf_export.export_hf(str(tmp_path / "hf"), model, params, spm_models["t5"])
  config = json.loads(open(os.path.join(output, "config.json")).read())
  assert config["architectures"] == ["MT5EncoderModel"]
  built = type(transformers.AutoModel.from_pretrained(output)).__name__
  card = model_card.model_card(reference_encoder(model, params, spm_models["t5"]), config, output,
                               128, {}, {})
  assert f"transformers.MT5EncoderModel.from_pretrained('{output}')" in card
  assert f"`AutoModel` builds `{built}`, not this encoder-only class" in card
  assert built == "MT5Model"


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_hf_export_reimports_exactly(tmp_path, spm_models, family):
  model = dual_encoder.DualEncoder(CONFIGS[family])
  params = random_params(model)
  output = hf_export.export_hf(str(tmp_path / "hf"), model, params, spm_models[family])
  reimported_model, reimported = importers.load_hf(output)
  assert reimported_model.encoder_config == CONFIGS[family]
  assert_params_equal(reimported, params)


@pytest.mark.parametrize("options,message", [
    (dict(shared_towers=False), "needs shared towers"),
    (dict(projection_dim=4), "cannot hold the projection layer")])
def test_hf_export_refuses_what_transformers_cannot_hold(tmp_path, spm_models, options, message):
  model = dual_encoder.DualEncoder(CONFIGS["t5"], **options)
  with pytest.raises(ValueError, match=message):
    hf_export.export_hf(str(tmp_path / "hf"), model, random_params(model), spm_models["t5"])
  assert os.listdir(tmp_path) == []


def test_encode_compiles_one_shape_per_length_bucket(spm_models):
  model = dual_encoder.DualEncoder(CONFIGS["t5"])
  encoder = reference_encoder(model, random_params(model), spm_models["t5"], batch_size=8)
  texts = [" ".join(TEXTS[i % len(TEXTS)] for i in range(n)) for n in range(1, 12)]
  for count in (1, 3, 8, 11, 5):
    encoder.encode(texts[:count])
  buckets = {encoder.bucket(len(ids)) for ids in encoder.tokenize(texts)}
  assert len(buckets) >= 3
  assert encoder._encode._cache_size() <= len(buckets)


def test_encode_splits_batches_over_all_local_devices(spm_models):
  assert jax.local_device_count() == 8
  model = dual_encoder.DualEncoder(CONFIGS["xlmr"])
  params = random_params(model)
  encoder = reference_encoder(model, params, spm_models["xlmr"], batch_size=5)
  assert encoder.batch_size == 8
  tokens = np.full((8, 16), CONFIGS["xlmr"].pad_id, np.int32)
  tokens[:, :3] = [0, 10, 2]
  assert len(encoder._encode(encoder.params, tokens, "query").sharding.device_set) == 8
  embeddings = encoder.encode(TEXTS * 2)
  encode_one = jax.jit(lambda ids: model.apply({"params": params}, ids,
                                               method=dual_encoder.DualEncoder.encode))
  for text, embedding in zip(TEXTS * 2, embeddings):
    ids = np.full((1, 128), CONFIGS["xlmr"].pad_id, np.int32)
    ids[0, :len(encoder.tokenize([text])[0])] = encoder.tokenize([text])[0]
    np.testing.assert_allclose(embedding, np.asarray(encode_one(ids))[0], atol=1e-6)
