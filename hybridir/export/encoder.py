"""The encoder users hold: `Encoder.encode(texts)` and the sentence-transformers / mteb
interface around it (`encode_queries`, `encode_corpus`, prompt types). `export.load_encoder` makes
one from an artifact, a training run, a Hugging Face directory or a T5X checkpoint.
"""
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hybridir.console import progress
from hybridir.data import text as text_lib
from hybridir.models import dual_encoder
from hybridir.training import partitioning

MIN_BUCKET = 16


@dataclasses.dataclass
class Encoder:
  """A dual encoder with its parameters and vocabulary; encodes texts in fixed-shape batches.

  The forward pass splits each batch over the local devices' data axis, so batch_size is rounded
  up to a multiple of it. Parameters are replicated, or with `num_partitions` > 1 split over that
  many local devices as the logical axis rules say (a model too large for one chip, e.g. mT5-XXL).
  Texts become tokens through `text.tokenize` with `text_format` (passage unit) and a prompt, as
  in training. Prompts are sentence-transformers': `prompts` (name -> text; default: the text
  format's prefixes as 'query' and 'document') and `default_prompt_name`, the prompt of an
  `encode(texts)` call that names none ('query': hybridir's own encoders, as trained; None: none).
  """
  model: dual_encoder.DualEncoder
  params: dict
  vocabulary: object
  max_length: int = 512
  batch_size: int = 32
  text_format: text_lib.TextFormat = dataclasses.field(default_factory=text_lib.TextFormat)
  query_max_length: int | None = None  # Queries' cut, as in training (None: max_length).
  name: str = "encoder"  # What reports and mteb call it (load_encoder: its folder's name).
  num_partitions: int = 1  # Local devices each parameter is split over (1: replicated).
  prompts: dict | None = None  # sentence-transformers' prompts (None: the text format's).
  default_prompt_name: str | None = "query"

  def __post_init__(self):
    self.family = self.model.encoder_config.family
    if self.prompts is None:
      self.prompts = {"query": self.text_format.query_prefix,
                      "document": self.text_format.passage_prefix}
    if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
      raise ValueError(f"Encoder.default_prompt_name {self.default_prompt_name!r} is not one of "
                       f"its prompts {sorted(self.prompts)}")
    self.mesh = partitioning.create_mesh(num_partitions=self.num_partitions,
                                         devices=jax.local_devices())
    num_devices = partitioning.data_parallel_size(self.mesh)
    self.batch_size = -(-self.batch_size // num_devices) * num_devices
    self._rules = ENCODE_AXIS_RULES
    shardings = encode_param_shardings(self.model, self.mesh)
    # Straight from host memory to each device's shard: no whole copy on one device first.
    self.params = jax.device_put(self.params, shardings)
    self._encode = encode_step(self.model, self.mesh, shardings)

  @property
  def dimension(self) -> int:
    return self.model.projection_dim or self.model.encoder_config.emb_dim

  def prompt(self, task: str | None = None, prompt_name: str | None = None,
             prompt: str | None = None) -> str:
    """The text put before each text, as sentence-transformers resolves it: `prompt`, else the
    prompt named `prompt_name`, else the task's ('query'; 'passage': the first of 'document',
    'passage', 'corpus'), as encode_query / encode_document do, else the default prompt's."""
    if prompt is not None:
      return prompt
    if prompt_name is not None:
      if prompt_name not in self.prompts:
        raise ValueError(f"encode: prompt_name {prompt_name!r} is not one of this encoder's "
                         f"prompts {sorted(self.prompts)}")
      return self.prompts[prompt_name]
    names = {"query": ("query",), "passage": ("document", "passage", "corpus"),
             None: (self.default_prompt_name,)}[task]
    return next((self.prompts[n] for n in names if n in self.prompts), "")

  def tokenize(self, texts: list[str], tower: str | None = "query",
               contexts: list[str] | None = None, prefix: str | None = None) -> list[list[int]]:
    """Ids of each text with `prefix` (default: the tower's prompt) and, for passages, its
    context; cut at the tower's length (no tower: max_length)."""
    contexts = [""] * len(texts) if contexts is None else list(contexts)
    if len(contexts) != len(texts):
      raise ValueError(f"encode: {len(texts)} texts but {len(contexts)} contexts")
    if tower != "passage" and any(contexts):
      raise ValueError("encode: contexts are passages' paragraphs; pass tower='passage'")
    prefix = self.prompt(tower) if prefix is None else prefix
    return [text_lib.tokenize(self.vocabulary, tower or "query", text, context,
                              self.length(tower), self.text_format, prefix)
            for text, context in zip(texts, contexts)]

  def length(self, tower: str | None) -> int:
    """The longest input of a tower: query_max_length for queries when set, else max_length."""
    return self.query_max_length if tower == "query" and self.query_max_length else (
        self.max_length)

  def bucket(self, num_tokens: int) -> int:
    """The padded length of a batch whose longest text has num_tokens: a power of two, at most
    the longest input (max_length, query_max_length when longer, num_tokens when longer yet)."""
    longest = max(self.max_length, self.query_max_length or 0, num_tokens)
    return min(longest, max(MIN_BUCKET, 1 << (num_tokens - 1).bit_length()))

  def encode(self, texts: str | Sequence[str], tower: str | None = None,
             contexts: Sequence[str] | None = None, *, batch_size: int | None = None,
             prompt_type: str | None = None, prompt_name: str | None = None,
             prompt: str | None = None, task: str | None = None,
             show_progress_bar: bool = False, normalize_embeddings: bool = False,
             convert_to_numpy: bool = True, **unused) -> np.ndarray:
    """Embeds texts ([N, D] float32; one text: [D]), as sentence-transformers' `encode` with the
    same arguments does.

    `tower`, else `prompt_type` (mteb): 'query' or 'passage' ('document', 'corpus'), selects
    the tower, its prompt and its length (query_max_length for queries) and lets passages take
    `contexts` (each one's paragraph); sentence-transformers' `task` selects the tower and length
    alone. The prompt is `prompt`, else `prompts[prompt_name]`, else the tower's, else the
    default prompt's (`Encoder.prompt`); with neither a text is cut at max_length and goes
    through the query tower. `normalize_embeddings` L2-normalises (the model's output already
    is when it normalises). Batches are sorted by length and padded to a bucket (a power of two
    up to max_length), so only a few shapes are ever compiled. Other sentence-transformers
    options (`unused`, e.g. `convert_to_tensor`) are accepted and ignored.

    This is also mteb's encoder protocol: `texts` may be mteb's DataLoader of batches (a corpus
    batch's `title` then `body`), with `prompt_type` a PromptType."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if texts and isinstance(texts[0], dict):  # mteb's batches, or BEIR-style documents.
      texts, contexts = _texts_of_records(texts)
    role = tower or prompt_type  # hybridir's and mteb's task: the tower and its prompt.
    role = _tower(role) if role is not None else None
    tower = role or (_tower(task) if task is not None else None)  # sentence-transformers' task.
    prefix = self.prompt(role, prompt_name, prompt)
    out = self.encode_ids(self.tokenize(texts, tower, contexts, prefix), tower or "query",
                          batch_size=batch_size, show_progress_bar=show_progress_bar)
    if normalize_embeddings:
      out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    out = out[0] if single else out
    return out if convert_to_numpy else jnp.asarray(out)

  def encode_ids(self, ids: Sequence[Sequence[int]], tower: str = "query", *,
                 batch_size: int | None = None, show_progress_bar: bool = False) -> np.ndarray:
    """Embeds token id lists ([N, D] float32) with the tower's encoder, as `encode` does once
    texts are tokenised."""
    batch_size = self.batch_size if batch_size is None else batch_size
    num_devices = partitioning.data_parallel_size(self.mesh)
    batch_size = -(-max(1, batch_size) // num_devices) * num_devices
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), self.dimension), np.float32)
    pad = self.model.encoder_config.pad_id
    starts = range(0, len(ids), batch_size)
    for start in progress(starts, f"encoding {len(ids)} {tower} texts", unit="batch",
                          enabled=show_progress_bar):
      chunk = order[start:start + batch_size]
      longest = max(len(ids[i]) for i in chunk)
      tokens = np.full((batch_size, self.bucket(longest)), pad, np.int32)
      for row, i in enumerate(chunk):
        tokens[row, :len(ids[i])] = ids[i]
      with partitioning.axis_rules_context(self._rules, self.mesh):
        # Placed first: under jax.distributed, jit refuses numpy input with a batch sharding.
        tokens = jax.device_put(tokens, partitioning.batch_sharding(self.mesh))
        embeddings = self._encode(self.params, tokens, tower)
      out[chunk] = np.asarray(embeddings)[:len(chunk)]
    return out

  def encode_queries(self, queries: str | Sequence[str], **options) -> np.ndarray:
    """encode(queries, tower='query', ...)."""
    return self.encode(queries, "query", **options)

  def encode_corpus(self, corpus, **options) -> np.ndarray:
    """encode(passages, tower='passage', ...); BEIR-style corpora too: dicts with 'text' and an
    optional 'title', read as the title, then the text (as MIRACL's candidates)."""
    if isinstance(corpus, dict):  # BEIR's columns {'title': [...], 'text': [...]}.
      corpus = [corpus]
    return self.encode(corpus, "passage", **options)

  # mteb's encoder protocol besides `encode`: scores and a model card.
  def similarity(self, embeddings1, embeddings2) -> np.ndarray:
    """[N1, N2] inner products, the score the model was trained with (cosine when it normalises)."""
    return np.atleast_2d(np.asarray(embeddings1)) @ np.atleast_2d(np.asarray(embeddings2)).T

  def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
    return np.sum(np.atleast_2d(np.asarray(embeddings1)) * np.atleast_2d(np.asarray(embeddings2)),
                  axis=-1)

  @property
  def mteb_model_meta(self):
    """mteb's ModelMeta of this encoder (mteb is imported only here)."""
    from mteb.models.model_meta import ModelMeta  # pylint: disable=import-outside-toplevel
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
    return ModelMeta.create_empty(overwrites=dict(
        name=f"hybridir/{self.name}", revision="local", embed_dim=self.dimension,
        max_tokens=self.max_length, n_parameters=params, framework=["JAX"], open_weights=True,
        similarity_fn_name="cosine" if self.model.normalize else "dot"))


_TOWERS = {"query": "query", "queries": "query", "passage": "passage", "document": "passage",
           "documents": "passage", "corpus": "passage"}


def _texts_of_records(records: Sequence[dict]) -> tuple[list[str], list[str]]:
  """(texts, contexts) of dicts holding one text each or a batch of them (mteb's batches): the
  `title`, then the `body` (else `text`), as MIRACL's candidates are read; no contexts."""
  texts, contexts = [], []
  for record in records:
    body = record.get("body", record.get("text"))
    if body is None:
      raise ValueError(f"encode: a record without 'text' or 'body': keys {sorted(record)}")
    body = [body] if isinstance(body, str) else list(body)
    titles = record.get("title") or [""] * len(body)
    titles = [titles] if isinstance(titles, str) else list(titles)
    texts += [f"{title.strip()} {text}" if title and title.strip() else text
              for title, text in zip(titles, body)]
    contexts += [""] * len(body)
  return texts, contexts


def _tower(name) -> str:
  """The tower an mteb PromptType ('query', 'document') or a prompt name selects."""
  name = getattr(name, "value", name)
  if name not in _TOWERS:
    raise ValueError(f"encode: tower/prompt {name!r}; expected one of {sorted(_TOWERS)}")
  return _TOWERS[name]


ENCODE_AXIS_RULES = partitioning.standard_logical_axis_rules(1, 1)


def encode_param_shardings(model: dual_encoder.DualEncoder, mesh: jax.sharding.Mesh):
  """Where evaluation keeps each parameter: replicated on a mesh whose model axis has size 1,
  else split over it as ENCODE_AXIS_RULES map the parameter's logical axes."""
  if partitioning.model_parallel_size(mesh) == 1:
    return partitioning.replicated(mesh)
  with partitioning.axis_rules_context(ENCODE_AXIS_RULES, mesh):
    boxed = dual_encoder.abstract_params(model, MIN_BUCKET, MIN_BUCKET)
    return partitioning.params_shardings(boxed, mesh, ENCODE_AXIS_RULES)


def encode_step(model: dual_encoder.DualEncoder, mesh: jax.sharding.Mesh, param_shardings=None):
  """The jitted (params, tokens, tower) -> embeddings of evaluation: params as param_shardings
  says (default: encode_param_shardings), the batch split over the mesh's data axis; trace it
  inside axis_rules_context(ENCODE_AXIS_RULES, mesh)."""
  if param_shardings is None:
    param_shardings = encode_param_shardings(model, mesh)
  batch = partitioning.batch_sharding(mesh)
  return jax.jit(
      lambda params, tokens, tower: model.apply(
          {"params": params}, tokens, tower, method=dual_encoder.DualEncoder.encode),
      in_shardings=(param_shardings, batch), out_shardings=batch, static_argnums=2)
