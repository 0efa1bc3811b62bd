"""The encoder interface users expect: sentence-transformers' `encode` options, `encode_queries` /
`encode_corpus`, and mteb's encoder protocol (mteb evaluates a hybridir encoder directly)."""
import numpy as np
import pytest

import hybridir
from hybridir.data import retrieval_data
from hybridir.data import text
from hybridir.models import families
from tests import reference_models as ref

QUESTIONS = ["Who led the Panthers in sacks?", "Wer führte die Panthers an?", "谁领先？"]
FORMAT = text.TextFormat(query_prefix="Query: ", passage_prefix="Passage: ",
                         passage_unit="sentence_with_context")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
  """A random tiny mT5 in a Hugging Face folder, with a 300-piece vocabulary of XQuAD-R."""
  folder = tmp_path_factory.mktemp("mt5")
  spm = families.train_vocabulary("t5", ref.xquad_texts(data_dir), str(folder / "spm"), 300)
  ref.write_spm(folder, spm, "t5")
  ref.save_random_mt5(folder, vocab_size=300)
  return str(folder)


@pytest.fixture(scope="module")
def encoder(model_dir):
  return hybridir.load_encoder(model_dir, batch_size=4, text_format=FORMAT)


@pytest.fixture(scope="module")
def xlmr_encoder(tmp_path_factory, data_dir):
  """A random tiny XLM-R from a Hugging Face folder, with a 300-piece vocabulary of XQuAD-R."""
  folder = tmp_path_factory.mktemp("xlmr")
  spm = families.train_vocabulary("xlmr", ref.xquad_texts(data_dir), str(folder / "spm"), 300)
  ref.write_spm(folder, spm, "xlmr")
  ref.save_random_xlmr(folder, vocab_size=families.vocabulary("xlmr", spm).vocab_size)
  return hybridir.load_encoder(str(folder), batch_size=4, text_format=FORMAT)


def test_a_single_string_gives_one_vector_equal_to_its_row_in_a_list(encoder):
  one = encoder.encode(QUESTIONS[1])
  assert one.shape == (encoder.dimension,)
  np.testing.assert_allclose(one, encoder.encode(QUESTIONS)[1], atol=1e-6)


def test_prompt_types_select_the_tower_and_its_prefix(encoder):
  queries = encoder.encode_queries(QUESTIONS)
  passages = encoder.encode_corpus(QUESTIONS)
  np.testing.assert_allclose(queries, encoder.encode(QUESTIONS, prompt_type="query"), atol=1e-6)
  np.testing.assert_allclose(passages, encoder.encode(QUESTIONS, prompt_name="document"),
                             atol=1e-6)
  np.testing.assert_allclose(passages, encoder.encode(QUESTIONS, tower="passage"), atol=1e-6)
  assert np.abs(queries - passages).max() > 1e-3  # Different prefixes, different vectors.
  with pytest.raises(ValueError, match="tower/prompt 'answer'"):
    encoder.encode(QUESTIONS, prompt_type="answer")


def test_corpus_records_read_as_title_then_text(encoder):
  records = [{"title": "The Panthers' season.", "text": "Kawann Short led the team."},
             {"text": "No title here."}]
  expected = encoder.encode(["The Panthers' season. Kawann Short led the team.",
                             "No title here."], tower="passage")
  np.testing.assert_allclose(encoder.encode_corpus(records), expected, atol=1e-6)
  columns = {"title": ["The Panthers' season.", ""],
             "text": ["Kawann Short led the team.", "No title here."]}
  np.testing.assert_allclose(encoder.encode_corpus(columns), expected, atol=1e-6)


def test_batch_size_progress_normalisation_and_output_type_options(encoder, capsys):
  reference = encoder.encode(QUESTIONS)
  np.testing.assert_allclose(encoder.encode(QUESTIONS, batch_size=1, show_progress_bar=True),
                             reference, atol=1e-6)
  assert "encoding 3 query texts" in capsys.readouterr().err
  normalised = encoder.encode(QUESTIONS, normalize_embeddings=True)
  np.testing.assert_allclose(np.linalg.norm(normalised, axis=-1), 1.0, atol=1e-5)
  as_array = encoder.encode(QUESTIONS, convert_to_numpy=False)
  assert not isinstance(as_array, np.ndarray) and as_array.shape == reference.shape


def _mteb_task(data_dir, language="en", num_questions=30, pool_size=200):
  """A local mteb retrieval task from XQuAD-R (no download): one language's first candidates
  and the questions answered among them, with hybridir's own ids."""
  import datasets
  from mteb.abstasks.retrieval import AbsTaskRetrieval
  from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
  from mteb.abstasks.task_metadata import TaskMetadata

  dataset = retrieval_data.load_lareqa(data_dir / "xquad-r", "xquad_r", languages=[language])
  candidates = dataset.candidates[language][:pool_size]
  pool = {c.candidate_id for c in candidates}
  questions = [q for q in dataset.questions[language] if set(q.relevant) <= pool][:num_questions]

  class XquadRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="HybridirXquadR", description="XQuAD-R, English, as a local test task.",
        reference="https://github.com/google-research-datasets/lareqa",
        dataset={"path": "local", "revision": "local"}, type="Retrieval", category="t2t",
        modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
        main_score="ndcg_at_10", date=("2019-01-01", "2019-12-31"), domains=["Encyclopaedic"],
        task_subtypes=[], license="cc-by-sa-4.0", annotations_creators="human-annotated",
        dialect=[], sample_creation="found", bibtex_citation="")

    def load_data(self, **kwargs):
      split = RetrievalSplitData(
          queries=datasets.Dataset.from_list([{"id": q.question_id, "text": q.text}
                                              for q in questions]),
          corpus=datasets.Dataset.from_list([{"id": c.candidate_id, "title": c.context,
                                              "text": c.text} for c in candidates]),
          relevant_docs={q.question_id: {d: 1 for d in q.relevant} for q in questions},
          top_ranked=None)
      self.dataset = {"default": {"test": split}}
      self.data_loaded = True

  return XquadRetrieval(), questions, candidates


@pytest.mark.slow
def test_mteb_evaluates_a_hybridir_encoder_as_hybridir_does(encoder, data_dir, tmp_path):
  mteb = pytest.importorskip("mteb")
  from hybridir.evaluation import metrics
  task, questions, candidates = _mteb_task(data_dir)
  result = mteb.evaluate(encoder, task, cache=None, show_progress_bar=False)
  scores = result.task_results[0].scores["test"][0]
  # The same retrieval scored by hybridir: its own embeddings, ranking and measures.
  query_emb = encoder.encode_queries([q.text for q in questions])
  corpus_emb = encoder.encode_corpus([{"title": c.context, "text": c.text} for c in candidates])
  similarity = query_emb @ corpus_emb.T
  run = {q.question_id: {c.candidate_id: float(s) for c, s in zip(candidates, row)}
         for q, row in zip(questions, similarity)}
  qrels = {q.question_id: {d: 1 for d in q.relevant} for q in questions}
  ours = metrics.aggregate(metrics.evaluate_run(run, qrels, ["ndcg_cut_10", "recall_10"]))
  assert 0 < scores["ndcg_at_10"] <= 1
  assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg_cut_10"], abs=1e-4)
  assert scores["recall_at_10"] == pytest.approx(ours["recall_10"], abs=1e-4)
  assert encoder.mteb_model_meta.embed_dim == encoder.dimension


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "xlmr"])
def test_hf_export_cli_folder_is_a_sentence_transformer_equal_to_hybridir(family, request, tmp_path,
                                                                         capsys):
  """The exported folder loads as is in sentence-transformers (its prompts, fast tokenizer and
  max_seq_length), without sentencepiece installed, and equals hybridir's embeddings; a
  10,000-character text is truncated."""
  pytest.importorskip("sentence_transformers")
  import json
  import transformers
  from hybridir.export import artifacts
  from hybridir.export import hf_export
  encoder = request.getfixturevalue({"t5": "encoder", "xlmr": "xlmr_encoder"}[family])
  artifact = artifacts.export_encoder(str(tmp_path / "artifact"), encoder.model, encoder.params,
                                      hf_export.vocabulary_file(encoder), max_length=32,
                                      text_format=FORMAT)
  output = tmp_path / "hf"
  assert hf_export.main(["--encoder", artifact, "--output", str(output)]) == 0
  assert "wrote the Hugging Face folder" in capsys.readouterr().err
  assert json.loads((output / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
  assert json.loads((output / "tokenizer_config.json").read_text())["model_max_length"] == 32
  assert (output / "tokenizer.json").exists() and "hybridir" in (output / "README.md").read_text()
  assert transformers.AutoTokenizer.from_pretrained(output).is_fast
  loaded = hybridir.load_encoder(artifact)
  texts = QUESTIONS + ["Kawann Short " * 800]  # ~10,000 characters.
  reference = ref.sentence_transformer_without_sentencepiece(
      output, texts, [{"prompt_name": "query"}, {"prompt_name": "document"}])
  assert reference["max_seq_length"] == 32
  # Equal embeddings of a random model mean equal tokens: prompts, fast tokenizer, truncation.
  for theirs, tower in zip(reference["embeddings"], ("query", "passage")):
    ours = loaded.encode(texts, tower=tower)
    assert np.allclose(np.linalg.norm(theirs, axis=-1), 1, atol=1e-5)
    assert (np.sum(theirs * ours, axis=-1) > 0.99999).all()


@pytest.mark.slow
def test_parameters_split_over_local_devices_encode_as_when_replicated(encoder):
  """num_partitions > 1 (a model too large for one chip) splits each parameter over that many
  devices as the logical axis rules say, and encodes what the replicated encoder does."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from hybridir.export import encoder as encoder_lib  # pylint: disable=import-outside-toplevel
  from hybridir.training import train_step  # pylint: disable=import-outside-toplevel
  model = encoder.model.clone(encoder_config=dataclasses.replace(
      encoder.model.encoder_config, num_heads=4))  # 4 heads, 300 ids, 24 mlp: split over 4.
  params = train_step.init_model_params(model, jax.random.PRNGKey(0), 8, 8)
  replicated, split = (encoder_lib.Encoder(model, params, encoder.vocabulary, 64, 8, FORMAT,
                                           num_partitions=n) for n in (1, 4))
  assert dict(split.mesh.shape) == {"data": jax.local_device_count() // 4, "model": 4}
  embedding = max(jax.tree.leaves(split.params), key=lambda x: x.size)
  assert embedding.shape[0] == 300
  assert embedding.sharding.shard_shape(embedding.shape)[0] == 75  # The vocabulary over 4.
  for tower in ("query", "passage"):
    np.testing.assert_allclose(split.encode(QUESTIONS, tower), replicated.encode(QUESTIONS, tower),
                               atol=2e-6)
