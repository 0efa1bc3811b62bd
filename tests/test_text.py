"""Training and evaluation share one text path: prefixes, passage unit, truncation, tokens."""
import dataclasses

import jax
import numpy as np
import pytest

import tasks
from hybridir.data import corpora
from hybridir.data import hybrid
from hybridir.data import input_pipeline
from hybridir.data import retrieval_data
from hybridir.data import text
from hybridir.data import vocab
from hybridir.export import encoder as encoder_lib
from hybridir.models import dual_encoder
from hybridir.models import t5
from hybridir.models import xlmr
from tests.test_tasks import spm_models  # noqa: F401  (the shared SentencePiece fixture)

LENGTHS = {"query": 32, "passage": 48}
TRUNCATION_LENGTH = 192  # The fixture vocabulary (800 pieces) splits finely: 92% of sentences fit.
PAIR = corpora.QAPair("q1", "en", "Where is the tower?", "Paris is big. The tower is in Paris.",
                      "Paris", "The tower is in Paris.")


def test_query_and_passage_carry_the_papers_prefixes_and_the_sentence_leads_its_paragraph():
  sentence, paragraph = text.passage_parts(PAIR, "sentence_with_context")
  assert text.model_input("query", PAIR.question) == "Query: Where is the tower?"
  assert text.model_input("passage", sentence, paragraph) == (
      "Passage: The tower is in Paris. Paris is big. The tower is in Paris.")


def test_prefixes_are_configurable_and_may_be_empty():
  bare = text.TextFormat(query_prefix="", passage_prefix="")
  assert text.model_input("query", "Who?", text_format=bare) == "Who?"
  custom = text.TextFormat(query_prefix="query: ", passage_prefix="passage: ")
  assert text.model_input("passage", "It.", "More.", custom) == "passage: It. More."


@pytest.mark.parametrize("unit, expected", [
    ("sentence", "Passage: The tower is in Paris."),
    ("paragraph", "Passage: Paris is big. The tower is in Paris."),
])
def test_other_passage_units_drop_the_context(unit, expected):
  text_format = text.TextFormat(passage_unit=unit)
  assert text.model_input("passage", *text.passage_parts(PAIR, unit), text_format) == expected


def test_record_without_answer_sentence_is_its_passage_alone():
  pair = corpora.QAPair("q2", "en", "Who?", "A whole passage.", "a")
  assert text.passage_parts(pair, "sentence_with_context") == ("A whole passage.", "")


@pytest.mark.parametrize("kwargs, message", [
    (dict(passage_unit="document"), "passage_unit must be one of"),
    (dict(query_prefix=None), "query_prefix must be a string"),
])
def test_bad_text_format_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    text.TextFormat(**kwargs)


def test_manifest_record_round_trips_and_bad_records_name_the_file():
  custom = text.TextFormat("q: ", "", "sentence")
  assert text.TextFormat.from_json(custom.to_json(), "m.json") == custom
  with pytest.raises(ValueError, match="m.json: text_format must be an object"):
    text.TextFormat.from_json({"query_prefix": ""}, "m.json")


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_answer_sentence_survives_truncation_wherever_it_sits_in_its_paragraph(
    data_dir, spm_models, family):  # noqa: F811
  vocabulary = tasks.get_vocabulary(family, spm_models[family])
  corpus = corpora.load_parallel_corpus(data_dir / "xquad-r", languages=["en"])
  length, start = TRUNCATION_LENGTH, len(vocab.start_ids(vocabulary))  # XLM-R's <s> first.
  budget = length - start - 1  # Room left by the special tokens.
  fitting = kept = kept_by_paragraph_cut = 0
  for pair in corpus.pairs["en"].values():
    sentence = vocabulary.encode(f"Passage: {pair.answer_sentence}")
    if len(sentence) > budget:
      continue  # The sentence alone is longer than the passage: nothing keeps it whole.
    fitting += 1
    ids = text.tokenize(vocabulary, "passage", *text.passage_parts(pair, "sentence_with_context"),
                        length)
    kept += len(ids) <= length and ids[start:start + len(sentence)] == sentence
    end = pair.passage.index(pair.answer_sentence) + len(pair.answer_sentence)
    kept_by_paragraph_cut += len(vocabulary.encode(f"Passage: {pair.passage[:end]}")) <= budget
  assert fitting > 1000 and kept == fitting
  assert kept_by_paragraph_cut < 0.7 * fitting  # What cutting the paragraph at the length kept.


def tiny_encoder(family, vocabulary, max_length):
  config = (t5.T5Config(vocab_size=vocabulary.vocab_size, emb_dim=8, num_layers=1, num_heads=2,
                        head_dim=4, mlp_dim=8) if family == "t5" else
            xlmr.XLMRConfig(vocab_size=vocabulary.vocab_size, emb_dim=8, num_layers=1,
                            num_heads=2, head_dim=4, mlp_dim=8, max_position_embeddings=130))
  model = dual_encoder.DualEncoder(config)
  tokens = np.ones((1, 4), np.int32)
  params = model.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
  return encoder_lib.Encoder(model, params, vocabulary, max_length)


@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_training_example_and_evaluation_candidate_of_one_record_are_the_same_tokens(
    data_dir, spm_models, family):  # noqa: F811
  mixture = tasks.register_parallel_qa(f"txt{family}", data_dir / "xquad-r", family,
                                       spm_models[family], languages=("de", "en"))
  source = input_pipeline.HybridInput(mixture.name, LENGTHS,
                                      hybrid.HybridSchedule(batch_size=16, alpha=0.0))
  evaluation = retrieval_data.load_lareqa(data_dir, "xquad_r", ("de", "en"))
  questions = {(q.language, q.question_id): q for items in evaluation.questions.values()
               for q in items}
  candidates = {c.candidate_id: c for items in evaluation.candidates.values() for c in items}
  encoder = tiny_encoder(family, source.vocabulary, LENGTHS["passage"])
  query_encoder = dataclasses.replace(encoder, max_length=LENGTHS["query"])
  pad = source.vocabulary.pad_id
  spec, batch = source.batch_spec(0), source.batch(0)
  for row, pair_id in enumerate(spec.pair_ids):
    passage_language = spec.passage_languages[row]
    [candidate_id] = [c for c in questions[passage_language, pair_id].relevant
                      if c.startswith(passage_language)]
    candidate = candidates[candidate_id]
    [passage] = encoder.tokenize([candidate.text], "passage", [candidate.context])
    trained = batch["passage_tokens"][row]
    assert trained[trained != pad].tolist() == passage
    [query] = query_encoder.tokenize([questions[spec.query_languages[row], pair_id].text])
    trained = batch["query_tokens"][row]
    assert trained[trained != pad].tolist() == query
