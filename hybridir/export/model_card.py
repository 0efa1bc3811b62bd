"""The model card (README.md) of a Hugging Face export: what the model is, a usage sample that runs
as written, the class transformers loads, its lengths and prompts, and the training run it came
from (name, step, data, settings from its config.gin) with its evaluation table.

The run is found from what `hf_export` exports: an artifact records its training run (MODEL_DIR)
and step, a MODEL_DIR is one; a Hugging Face folder has none. The evaluation table is the run's
`study_results.json`, or an evaluation `summary.json` given (`hybridir.evaluation.eval_run`).
"""
import ast
import json
import os
import re

from hybridir.export import artifacts
from hybridir.export import encoder as encoder_lib
from hybridir import fs
from hybridir.study import study_results
from hybridir.training import checkpoints
from hybridir.training import run_dir

# config.gin macros the card shows: the data, then the settings.
DATA_MACROS = ("CORPUS_DIR", "LANGUAGES", "TRAIN_SPLIT", "INIT_CHECKPOINT", "SPM_PATH")
SETTING_MACROS = ("FAMILY", "TRAIN_STEPS", "BATCH_SIZE", "ALPHA", "LEARNING_RATE", "WARMUP_STEPS",
                  "WEIGHT_DECAY", "TEMPERATURE", "DROPOUT_RATE", "SEED", "TASK_FEATURE_LENGTHS")
SETTINGS = ("monolingual", "cross_lingual", "multilingual")
_MACRO_LINE = re.compile(r"^([A-Z][A-Z0-9_]*) = (.*)$")


def training_run(source: str) -> dict:
  """{'model_dir', 'name', 'step', 'macros'} of the run an export came from; {} for none."""
  if fs.exists(os.path.join(source, artifacts.MANIFEST)):
    metadata = artifacts.read_manifest(source).get("metadata") or {}
    model_dir, step = metadata.get("training_checkpoint"), metadata.get("step")
  elif run_dir.is_run(source):
    model_dir, step = source, run_dir.chosen_step(source)
    if step is None:  # No study chose one: the latest, as load_encoder takes.
      step = max(checkpoints.training_steps(source), default=None)
  else:
    return {}
  if not model_dir:
    return {}
  return {"model_dir": model_dir, "name": os.path.basename(os.path.normpath(model_dir)),
          "step": step, "macros": config_macros(os.path.join(model_dir, run_dir.CONFIG))}


def config_macros(path: str) -> dict:
  """The macros (`NAME = value`) of a run's config.gin, as Python values where literal; a value
  gin wrapped (a trailing backslash, indented lines after) is read whole."""
  if not fs.exists(path):
    return {}
  statements = []
  for line in fs.read_bytes(path).decode("utf-8").splitlines():
    if statements and (line[:1].isspace() or statements[-1].endswith("\\")):
      statements[-1] = statements[-1].rstrip("\\") + " " + line.strip()
    else:
      statements.append(line)
  macros = {}
  for statement in statements:
    match = _MACRO_LINE.match(statement)
    if match:
      try:
        macros[match.group(1)] = ast.literal_eval(match.group(2).strip())
      except (ValueError, SyntaxError):
        macros[match.group(1)] = match.group(2)  # A reference (@f()) or a macro (%NAME).
  return macros


def evaluation_rows(run: dict, summary_path: str | None = None) -> dict:
  """{(dataset, setting): {measure: value}} of the given summary.json (eval_run's `{dataset:
  {setting/measure: value}}`), else of the run's study_results.json (each dataset's full-pool
  averages); {} when neither exists."""
  rows = {}
  if summary_path:
    with fs.open(summary_path) as f:
      summary = json.load(f)
    for dataset, values in summary.items():
      for key, value in (values.items() if dataset != "degradation" else ()):
        setting, _, measure = key.partition("/")
        rows.setdefault((dataset, setting), {})[measure] = value
    return rows
  path = os.path.join(run.get("model_dir") or "", run_dir.STUDY_RESULTS)
  if not run or not fs.exists(path):
    return {}
  for dataset, results in study_results.read(path).evaluation.datasets.items():
    for setting in SETTINGS:
      average = results.full.get(setting, {}).get("average", {})
      values = {k: v for k, v in average.items() if isinstance(v, (int, float))}
      if values:
        rows[(dataset, setting)] = values
  return rows


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _loading_line(hf_config: dict, path: str) -> str:
  """Which transformers class to load, and what AutoModel builds when that is another class."""
  name = hf_config["architectures"][0]
  line = (f"In transformers, load it as `transformers.{name}.from_pretrained({path!r})`, the class "
          "config.json's `architectures` names")
  try:
    from transformers.models.auto import modeling_auto  # pylint: disable=import-outside-toplevel
    auto = modeling_auto.MODEL_MAPPING_NAMES.get(hf_config["model_type"])
  except ImportError:
    auto = None
  if auto and auto != name:
    return (f"{line}; `AutoModel` builds `{auto}`, not this encoder-only class, and fails without "
            f"decoder inputs: load `{name}`")
  return f"{line}; `AutoModel` builds the same class"


def model_card(encoder: encoder_lib.Encoder, hf_config: dict, path: str, max_seq_length: int,
               run: dict, evaluation: dict) -> str:
  """README.md of the Hugging Face folder `path` holding `encoder`."""
  model, prompts = encoder.model, encoder.prompts
  query_prompt, document_prompt = encoder.prompt("query"), encoder.prompt("passage")
  query_length = encoder.query_max_length or max_seq_length
  title = run.get("name") or os.path.basename(os.path.normpath(path))
  origin = (f" by the training run `{run['name']}` (`{run['model_dir']}`, step {run['step']})"
            if run else "")
  default = encoder.default_prompt_name
  default_text = (f"adds the default prompt `{default}` ({prompts[default]!r}), as hybridir's "
                  "`encoder.encode(texts)` does" if default and prompts.get(default)
                  else "adds no prompt, as hybridir's `encoder.encode(texts)`")
  pooled = {"first_dense": "the first token through the pooler's dense tanh layer",
            "first": "the first token"}.get(model.pooling, f"{model.pooling} pooling over the "
                                                            "attention mask")
  settings = _table(["setting", "value"], [
      ["family", model.encoder_config.family], ["dimension", encoder.dimension],
      ["pooling", model.pooling], ["normalised", model.normalize],
      ["passage length (max_seq_length)", max_seq_length],
      ["query length (query_length)", query_length], ["query prompt", repr(query_prompt)],
      ["passage prompt", repr(document_prompt)], ["default prompt", default],
      ["passage unit", encoder.text_format.passage_unit]])
  context = ("\nA passage was trained as its sentence, then its paragraph (passage unit "
             "`sentence_with_context`): pass `f\"{sentence} {paragraph}\"` as the document."
             if encoder.text_format.uses_context else "")
  macros = run.get("macros", {})
  training = _table(["", "value"], [["run", f"`{run['name']}`, step {run['step']}"]] + [
      [name, f"`{macros[name]!r}`"] for name in DATA_MACROS + SETTING_MACROS if name in macros]
  ) if run else "Not recorded: this folder was not exported from a hybridir training run."
  measures = sorted({m for values in evaluation.values() for m in values})
  scores = _table(["dataset", "setting"] + measures, [
      [dataset, setting] + [f"{values[m]:.4f}" if m in values else "" for m in measures]
      for (dataset, setting), values in sorted(evaluation.items())]) if evaluation else (
      f"None recorded with the run: `python -m hybridir.evaluate --encoder {path} ...` "
      "evaluates it.")
  return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags: [sentence-transformers, feature-extraction, retrieval, hybridir]
---
# {title}

A multilingual dense retriever trained with hybridir (hybrid mono- and cross-lingual
batches){origin}.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer({path!r})
queries = model.encode_query(["Who led the Panthers in sacks?"])
passages = model.encode_document(["Kawann Short led the team in sacks."])
print(model.similarity(queries, passages))
```

`encode_query` adds {query_prompt!r} and cuts queries at {query_length} tokens, as in training;
`encode_document` adds {document_prompt!r}; `encode(texts)` with no prompt {default_text}; every
call but `encode_query` cuts at {max_seq_length} tokens. `hybridir.load_encoder({path!r})`
reads this folder back: its `encode`, `encode_queries` and `encode_corpus` give the same
vectors.{context}

{_loading_line(hf_config, path)}. The embedding is {pooled}{", L2-normalised" * model.normalize}
(modules.json), after the prompt is put before the text.

{settings}

## Training

{training}

## Evaluation

{scores}
"""
