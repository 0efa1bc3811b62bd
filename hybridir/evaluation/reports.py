"""Evaluation reports: JSON, markdown tables and plots of `evaluate.evaluate_settings` results.

Every file is written atomically (temporary file, then rename). Plots use matplotlib's Agg canvas
directly (no pyplot state), so reports can be written from any thread or headless machine.
"""
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from hybridir import fs

SETTINGS = ("monolingual", "cross_lingual", "multilingual")


def _json_safe(value: Any) -> Any:
  """NaN and infinities become null: strict JSON has no spelling for them."""
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def write_json(path: str, results: Mapping[str, Any]) -> None:
  """Writes `results` as indented, key-sorted strict JSON."""
  text = json.dumps(_json_safe(results), indent=1, sort_keys=True, allow_nan=False)
  fs.write_text_atomically(path, text + "\n")


def _format(value: Optional[float]) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return str(value) if isinstance(value, int) else f"{value:.4f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_format(c) if not isinstance(c, str) else c for c in row) + " |"
            for row in rows]
  return "\n".join(lines)


def _languages(results: Mapping[str, Any]) -> list[str]:
  return sorted(results["monolingual"]["per_language"])


def _cross_matrix(results: Mapping[str, Any], measure: str) -> tuple[list[str], np.ndarray]:
  """[question language, candidate language] matrix of `measure`; the diagonal is monolingual."""
  languages = sorted(set(_languages(results)) |
                     {y for row in results["cross_lingual"]["per_pair"].values() for y in row})
  matrix = np.full((len(languages), len(languages)), np.nan)
  for i, x in enumerate(languages):
    for j, y in enumerate(languages):
      entry = (results["monolingual"]["per_language"].get(x, {}) if x == y else
               results["cross_lingual"]["per_pair"].get(x, {}).get(y, {}))
      matrix[i, j] = entry.get(measure, np.nan)
  return languages, matrix


def markdown_tables(results: Mapping[str, Any], measure: str = "map") -> str:
  """Markdown: averages per setting, a per-language table, the cross-lingual matrix of `measure`."""
  averages = [results[s]["average"] for s in SETTINGS]
  measures = sorted({name for avg in averages for name in avg})
  sections = ["## Averages over languages (pairs)",
              markdown_table(["setting"] + measures,
                     [[s] + [avg.get(m) for m in measures] for s, avg in zip(SETTINGS, averages)])]
  header = ["language", f"mono {measure}", f"cross {measure} (mean over pools)",
            f"multi {measure}", "multi rank_distance", "num_q (mono/multi)"]
  rows = []
  for lang in _languages(results):
    cross = [e[measure] for e in results["cross_lingual"]["per_pair"].get(lang, {}).values()
             if measure in e]
    mono = results["monolingual"]["per_language"][lang]
    multi = results["multilingual"]["per_language"].get(lang, {})
    rows.append([lang, mono.get(measure), float(np.mean(cross)) if cross else None,
                 multi.get(measure), multi.get("rank_distance"),
                 f"{mono['num_q']}/{multi.get('num_q', 0)}"])
  sections += [f"## Per language ({measure})", markdown_table(header, rows)]
  languages, matrix = _cross_matrix(results, measure)
  sections += [f"## Cross-lingual {measure} (rows: questions, columns: candidates; diagonal: "
               f"monolingual)",
               markdown_table(["questions \\ candidates"] + languages,
                      [[x] + [None if math.isnan(v) else float(v) for v in row]
                       for x, row in zip(languages, matrix)])]
  return "\n\n".join(sections) + "\n"


def save_figure(figure: Figure, path: str) -> None:
  FigureCanvasAgg(figure)
  figure.tight_layout()
  with fs.atomic_output(path) as temporary:
    figure.savefig(temporary, format="png", dpi=120)


def plot_cross_lingual_heatmap(path: str, results: Mapping[str, Any], measure: str = "map") -> None:
  """Heat map of `measure` per (question language, candidate language); diagonal: monolingual."""
  languages, matrix = _cross_matrix(results, measure)
  size = 1.0 + 0.6 * len(languages)
  figure = Figure(figsize=(size + 1.5, size))
  axes = figure.add_subplot()
  top = max(1e-9, float(np.nanmax(matrix))) if np.isfinite(matrix).any() else 1.0
  image = axes.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=top)
  axes.set_xticks(range(len(languages)), languages)
  axes.set_yticks(range(len(languages)), languages)
  axes.set_xlabel("candidate language")
  axes.set_ylabel("question language")
  for (i, j), value in np.ndenumerate(matrix):
    if not math.isnan(value):
      axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="black" if value > 0.6 * top else "white")
  figure.colorbar(image, ax=axes, label=measure)
  axes.set_title(f"Cross-lingual {measure}")
  save_figure(figure, path)


def plot_per_language_bars(path: str, results: Mapping[str, Any], measure: str = "map") -> None:
  """Bars per question language: monolingual, cross-lingual (mean over pools), multilingual."""
  languages = _languages(results)
  values = {"monolingual": [], "cross-lingual": [], "multilingual": []}
  for lang in languages:
    cross = [e[measure] for e in results["cross_lingual"]["per_pair"].get(lang, {}).values()
             if measure in e]
    values["monolingual"].append(results["monolingual"]["per_language"][lang].get(measure, np.nan))
    values["cross-lingual"].append(np.mean(cross) if cross else np.nan)
    values["multilingual"].append(
        results["multilingual"]["per_language"].get(lang, {}).get(measure, np.nan))
  figure = Figure(figsize=(2.0 + 0.8 * len(languages), 4.0))
  axes = figure.add_subplot()
  width = 0.27
  for offset, (label, heights) in enumerate(values.items()):
    axes.bar(np.arange(len(languages)) + (offset - 1) * width, heights, width, label=label)
  axes.set_xticks(range(len(languages)), languages)
  axes.set_ylabel(measure)
  axes.set_title(f"{measure} per question language")
  axes.legend()
  save_figure(figure, path)


def plot_rank_distance(path: str, results: Mapping[str, Any]) -> None:
  """Bars of the multilingual rank distance (language bias, lower is better) per language."""
  per_language = results["multilingual"]["per_language"]
  languages = sorted(per_language)
  heights = [per_language[lang].get("rank_distance", np.nan) for lang in languages]
  figure = Figure(figsize=(2.0 + 0.6 * len(languages), 4.0))
  axes = figure.add_subplot()
  axes.bar(range(len(languages)), heights, color="tab:red")
  axes.set_xticks(range(len(languages)), languages)
  axes.set_ylabel("rank distance (lower is better)")
  axes.set_title("Language bias in the multilingual pool")
  save_figure(figure, path)


def write_report(output_dir: str, results: Mapping[str, Any], measure: str = "map",
                 name: str = "results") -> dict[str, str]:
  """Writes `<name>.json`, `<name>.md` and three PNG plots to `output_dir`; returns the paths."""
  paths = {kind: os.path.join(output_dir, f"{name}{suffix}") for kind, suffix in (
      ("json", ".json"), ("markdown", ".md"), ("heatmap", "_cross_lingual.png"),
      ("bars", "_per_language.png"), ("rank_distance", "_rank_distance.png"))}
  write_json(paths["json"], results)
  fs.write_text_atomically(paths["markdown"], markdown_tables(results, measure))
  plot_cross_lingual_heatmap(paths["heatmap"], results, measure)
  plot_per_language_bars(paths["bars"], results, measure)
  plot_rank_distance(paths["rank_distance"], results)
  return paths
