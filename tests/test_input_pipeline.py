"""HybridInput: host-local numpy batches of hybrid mixtures, seqio tasks and seqio mixtures."""
import dataclasses
import itertools

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir.data import text
from hybridir.data import vocab
from hybridir import errors
from tests.test_tasks import spm_models  # noqa: F401  (the shared SentencePiece fixture)

LANGUAGES = ("de", "en", "zh")
LENGTHS = {"query": 16, "passage": 32}


@pytest.fixture(scope="module")
def mixture(data_dir, spm_models):  # noqa: F811
  return tasks.register_parallel_qa("ip", data_dir / "xquad-r", "t5", spm_models["t5"],
                                    languages=LANGUAGES)


SCHEDULE = {field.name for field in dataclasses.fields(hybrid.HybridSchedule)}


def make_input(name, lengths=LENGTHS, batch_size=8, **kwargs):
  """HybridInput of `name` drawing by the schedule of `batch_size` and the schedule fields among
  `kwargs` (the rest are HybridInput's)."""
  settings = {key: kwargs.pop(key) for key in list(kwargs) if key in SCHEDULE}
  return input_pipeline.HybridInput(name, lengths, hybrid.HybridSchedule(batch_size, **settings),
                                    **kwargs)


def hybrid_input(mixture, **kwargs):
  return make_input(mixture.name, **kwargs)


def test_batch_is_host_local_int32_of_the_feature_lengths(mixture):
  batch = hybrid_input(mixture, host_index=1, host_count=2).batch(0)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "query_tokens": ((4, 16), np.int32), "passage_tokens": ((4, 32), np.int32),
      "pair_ids": ((4,), np.int32), "passage_keys": ((4,), np.int32)}


def test_restart_at_step_n_gives_the_batches_of_an_uninterrupted_run(mixture):
  uninterrupted = hybrid_input(mixture, seed=3)
  first = [batch for batch, _ in zip(uninterrupted, range(8))][5:]
  restarted = hybrid_input(mixture, seed=3).iterate(start_step=5)
  for expected in first:
    actual = next(restarted)
    for key in expected:
      np.testing.assert_array_equal(actual[key], expected[key])


def test_seeds_give_different_schedules(mixture):
  one, two = hybrid_input(mixture, seed=0), hybrid_input(mixture, seed=1)
  assert any(not np.array_equal(one.batch(s)["pair_ids"], two.batch(s)["pair_ids"])
             for s in range(4))


def test_two_hosts_share_kind_and_languages_and_draw_disjoint_pairs(mixture):
  hosts = [hybrid_input(mixture, host_index=i, host_count=2) for i in range(2)]
  whole = hybrid_input(mixture)
  for step in range(10):
    specs = [host.batch_spec(step) for host in hosts]
    assert len({(s.kind, s.query_language, s.passage_language) for s in specs}) == 1
    ids = [host.batch(step)["pair_ids"] for host in hosts]
    assert not set(ids[0]) & set(ids[1])
    np.testing.assert_array_equal(np.concatenate(ids), whole.batch(step)["pair_ids"])


def test_default_batches_have_no_duplicate_pair_ids(mixture):
  source = hybrid_input(mixture, batch_size=32)
  for step in range(20):
    assert len(set(source.batch(step)["pair_ids"].tolist())) == 32


def expected_tokens(vocabulary, text, length):
  """Ids without the end token, as the family's tokenizer truncates them."""
  return vocab.tokenize(vocabulary, text, length)[:-1]


def query_text(pair):
  return f"Query: {pair.question}"


def passage_text(pair):
  """The answer sentence, then its paragraph (the default passage unit)."""
  return f"Passage: {pair.answer_sentence} {pair.passage}"


def test_mono_batch_queries_and_passages_are_that_languages_texts(mixture):
  source = hybrid_input(mixture)
  step = next(s for s in range(50) if source.batch_spec(s).kind == "mono")
  spec, batch = source.batch_spec(step), source.batch(step)
  language = spec.query_language
  for row, pair_id in enumerate(spec.pair_ids):
    pair = mixture.corpus.pairs[language][pair_id]
    query, passage = batch["query_tokens"][row], batch["passage_tokens"][row]
    assert query[query != 0].tolist()[:-1] == expected_tokens(source.vocabulary, query_text(pair),
                                                              16)
    assert passage[passage != 0].tolist()[:-1] == expected_tokens(source.vocabulary,
                                                                  passage_text(pair), 32)
    assert mixture.pair_index[pair_id] == batch["pair_ids"][row]


def test_cross_batch_passages_are_in_the_passage_language(mixture):
  source = hybrid_input(mixture)
  step = next(s for s in range(50) if source.batch_spec(s).kind == "cross")
  spec, batch = source.batch_spec(step), source.batch(step)
  assert spec.query_languages[0] != spec.passage_languages[0]
  pair = mixture.corpus.pairs[spec.passage_languages[0]][spec.pair_ids[0]]
  passage = batch["passage_tokens"][0]
  assert passage[passage != 0].tolist()[:-1] == expected_tokens(source.vocabulary,
                                                                passage_text(pair), 32)


@pytest.mark.slow
def test_mixed_pair_batches_gather_each_examples_languages(data_dir, spm_models):  # noqa: F811
  mixed = tasks.register_parallel_qa("ipm", data_dir / "xquad-r", "t5", spm_models["t5"],
                                     languages=LANGUAGES)
  source = hybrid_input(mixed, alpha=0.0)
  spec, batch = source.batch_spec(0), source.batch(0)
  assert spec.query_language == "mixed" and len(set(spec.query_languages)) > 1
  for row, (pair_id, language) in enumerate(zip(spec.pair_ids, spec.query_languages)):
    query = batch["query_tokens"][row]
    question = query_text(mixed.corpus.pairs[language][pair_id])
    assert query[query != 0].tolist()[:-1] == expected_tokens(source.vocabulary, question, 16)


def test_xlmr_batches_pad_with_1_after_bos_0_and_eos_2(data_dir, spm_models):  # noqa: F811
  xlmr = tasks.register_parallel_qa("ipx", data_dir / "xquad-r", "xlmr", spm_models["xlmr"],
                                    languages=("de", "en"))
  source = make_input(xlmr.name, {"query": 64, "passage": 32}, batch_size=4)
  query = source.batch(0)["query_tokens"]
  assert source.family == "xlmr" and source.vocabulary.pad_id == 1
  assert np.all(query[:, 0] == 0) and np.all(query[:, -1] == 1)
  for row in query:
    assert row[row != 1][-1] == 2


def test_seqio_task_batches_are_deterministic_epochs_of_distinct_examples(mixture):
  one = make_input("ip_cross_en_de", seed=2)
  two = make_input("ip_cross_en_de", seed=2, alpha=0.0)  # A task's batches know no alpha.
  np.testing.assert_array_equal(one.batch(7)["passage_tokens"], two.batch(7)["passage_tokens"])
  epoch = np.concatenate([one.batch(step)["pair_ids"] for step in range(1190 // 8)])
  assert len(set(epoch.tolist())) == len(epoch)
  spec = one.batch_spec(0)
  assert (spec.kind, spec.query_language, spec.passage_language) == ("example", "en", "de")
  assert spec.pair_ids[0] in mixture.pair_index


def test_seqio_task_batches_hold_the_tasks_own_examples(mixture):
  source = make_input("ip_cross_zh_de")
  task = seqio.TaskRegistry.get("ip_cross_zh_de")
  examples = input_pipeline.task_to_numpy(task, LENGTHS)
  pair_ids = [ex["pair_id"] for ex in task.get_dataset(LENGTHS, shuffle=False).as_numpy_iterator()]
  row_of = {pair_id: row for row, pair_id in enumerate(pair_ids)}
  batch = source.batch(3)
  rows = [row_of[pair_id] for pair_id in batch["pair_ids"]]
  np.testing.assert_array_equal(batch["query_tokens"], examples["query_tokens"][rows])
  np.testing.assert_array_equal(batch["passage_tokens"], examples["passage_tokens"][rows])


@pytest.mark.slow
def test_each_split_serves_its_own_articles_from_one_token_table(data_dir,
                                                                 spm_models):  # noqa: F811
  corpus = tasks.register_parallel_qa("ips", data_dir / "xquad-r", "t5", spm_models["t5"],
                                      languages=LANGUAGES,
                                      splits={"train": "train", "validation": "test"})
  train = make_input("ips_hybrid")
  validation = make_input("ips_hybrid", alpha=1.0, split="validation")
  validation_rows = set(corpus.rows(corpus.corpora["validation"].pair_ids()))
  for step in range(6):
    assert not set(train.batch(step)["pair_ids"]) & validation_rows
    batch = validation.batch(step)
    assert set(batch["pair_ids"]) <= validation_rows
    assert validation.batch_spec(step).kind == "mono"
  assert train._tokens is validation._tokens  # One table, each split tokenised once.
  # A seqio task serves the same split, and the identity names it.
  task_input = make_input("ips_mono_de", split="validation")
  assert set(task_input.batch(0)["pair_ids"]) <= validation_rows
  assert "split" not in train.identity() and task_input.identity()["split"] == "validation"
  with pytest.raises(ValueError, match=r"split must be one of \['train', 'validation'\] .*"
                     r"found 'test'"):
    make_input("ips_mono_de", split="test")
  tasks.unregister_parallel_qa("ips")


def test_feature_converter_pads_each_text_to_its_length_with_the_pad_id():
  converter = input_pipeline.DualEncoderFeatureConverter(pad_id=1)
  dataset = tf.data.Dataset.from_tensors({"query": tf.constant([5, 2], tf.int32),
                                          "passage": tf.constant([7, 8, 2], tf.int32),
                                          "pair_id": tf.constant(3, tf.int32)})
  (example,) = converter(dataset, {"query": 4, "passage": 3}).as_numpy_iterator()
  assert set(example) == {"query_tokens", "passage_tokens"}
  np.testing.assert_array_equal(example["query_tokens"], [5, 2, 1, 1])
  np.testing.assert_array_equal(example["passage_tokens"], [7, 8, 2])


@pytest.mark.parametrize("features, error, message", [
    ({"query": [1, 2, 3, 4, 5]}, tf.errors.InvalidArgumentError,
     "Feature .{1,2}query.{1,2} has length not less than or equal to the expected length of 4"),
    ({"query": np.array([1, 2], np.int64)}, ValueError, "incorrect type for feature 'query'"),
    ({"query": [[1, 2]]}, ValueError, "incorrect rank for feature 'query'"),
    ({"passage": None}, ValueError, "missing an expected feature.*'passage'"),
])
def test_feature_converter_refuses_task_features_the_model_cannot_take(features, error, message):
  example = {"query": np.array([1, 2], np.int32), "passage": np.array([3, 2], np.int32)}
  example.update({k: v if v is None or isinstance(v, np.ndarray) else np.array(v, np.int32)
                  for k, v in features.items()})
  dataset = tf.data.Dataset.from_tensors({k: v for k, v in example.items() if v is not None})
  with pytest.raises(error, match=message):
    list(input_pipeline.DualEncoderFeatureConverter()(dataset, {"query": 4, "passage": 4}))


def test_feature_converter_never_packs():
  with pytest.raises(ValueError, match="pack must be False"):
    input_pipeline.DualEncoderFeatureConverter(pack=True)


def test_example_mixture_batches_mix_tasks_on_each_host(mixture):
  hosts = [make_input("ip_mono_mix", batch_size=16, seed=0, host_index=i, host_count=2)
           for i in range(2)]
  specs = [host.batch_spec(0) for host in hosts]
  assert set(specs[0].query_languages + specs[1].query_languages) == set(LANGUAGES)
  assert all(s.query_languages == s.passage_languages for s in specs)
  assert hosts[0].batch(0)["query_tokens"].shape == (8, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="nope_hybrid"), "unknown task or mixture 'nope_hybrid'"),
    (dict(lengths={"query": 1, "passage": 32}), r"\['query'\] must be .* >= 2"),
    (dict(lengths={"query": 16}), r"missing \['passage'\]"),
    (dict(batch_size=6, host_count=4), "batch_size 6 is not divisible by host_count 4"),
    (dict(batch_size=4, host_index=2, host_count=2), r"host_index must be in \[0, 2\)"),
    (dict(batch_size=2000), "batch_size 2000 is larger than the 1190 pair ids"),
    (dict(batch_size=0), "HybridSchedule.batch_size must be a positive integer, found 0"),
    (dict(alpha=1.5), r"HybridSchedule.alpha must be in \[0, 1\]"),
])
def test_invalid_settings_fail_early_and_say_why(mixture, kwargs, message):
  with pytest.raises(errors.SettingError, match=message):
    make_input(**{"name": mixture.name, **kwargs})


def test_the_batch_size_comes_only_from_a_schedule(mixture):
  with pytest.raises(errors.SettingError, match="schedule must be a hybrid.HybridSchedule, found"):
    input_pipeline.HybridInput(mixture.name, LENGTHS, 8)
  source = hybrid_input(mixture, batch_size=16, seed=4, alpha=1.0)
  assert (source.batch_size, source.seed, source._sampler.schedule) == (
      16, 4, hybrid.HybridSchedule(16, alpha=1.0, seed=4))


def test_evaluation_task_is_refused_as_training_input(data_dir, spm_models):  # noqa: F811
  tasks.register_lareqa("xquad_r", data_dir, "t5", spm_models["t5"], languages=("en",))
  with pytest.raises(ValueError, match=r"'xquad_r_en_\w+' .* is not a parallel QA task"):
    make_input("lareqa_xquad_r")


def same_passage_text(mixture, first, second):
  """Whether two pair ids' passages are the same text in some language both have."""
  unit = mixture.text_format.passage_unit
  return any(first in pairs and second in pairs
             and text.passage_parts(pairs[first], unit) == text.passage_parts(pairs[second], unit)
             for pairs in mixture.corpus.pairs.values())


def test_questions_on_one_answer_sentence_share_a_passage_key_and_no_other_paragraph_does(
    mixture):
  # The passage is the answer sentence with its paragraph: questions on another sentence of the
  # paragraph mostly have another passage (as LAReQA's candidates are one per sentence); they
  # share a key where another language's passages coincide.
  keys = hybrid_input(mixture).passage_keys
  keys_of_passage, paragraphs_of_key = {}, {}
  for pair_id, pair in mixture.corpus.pairs["en"].items():
    key = keys[mixture.pair_index[pair_id]]
    keys_of_passage.setdefault((pair.answer_sentence, pair.passage), set()).add(key)
    paragraphs_of_key.setdefault(key, set()).add(pair.passage)
  assert all(len(k) == 1 for k in keys_of_passage.values())
  assert all(len(paragraphs) == 1 for paragraphs in paragraphs_of_key.values())
  assert len(paragraphs_of_key) > 3 * 240  # XQuAD-R's 240 paragraphs hold ~790 answer sentences.


@pytest.mark.slow
@pytest.mark.parametrize("passage_unit", ["paragraph", "sentence_with_context"])
def test_default_batches_never_contrast_examples_whose_passages_are_one_text(
    data_dir, spm_models, passage_unit):  # noqa: F811
  registered = tasks.register_parallel_qa(f"ipk_{passage_unit}", data_dir / "xquad-r", "t5",
                                          spm_models["t5"], languages=LANGUAGES,
                                          text_format=text.TextFormat(passage_unit=passage_unit))
  source = hybrid_input(registered, batch_size=32)
  shared = 0
  for step in range(40):
    spec, keys = source.batch_spec(step), source.batch(step)["passage_keys"]
    for i, j in itertools.combinations(range(32), 2):
      if same_passage_text(registered, spec.pair_ids[i], spec.pair_ids[j]):
        shared += 1
        assert keys[i] == keys[j], (step, spec.pair_ids[i], spec.pair_ids[j])
  assert shared > 10  # Shared passages are common at batch 32: the check is not vacuous.


def test_identity_records_every_batch_schedule_setting(mixture):
  sampler = hybrid_input(mixture).identity()["sampler"]
  assert {k: sampler[k] for k in ("alpha_mono", "cross_pairs", "language_sampling",
                                  "language_temperature", "source_temperature")} == {
      "alpha_mono": 0.5, "cross_pairs": "per_example", "language_sampling": "uniform",
      "language_temperature": 1.0, "source_temperature": 1.0}
