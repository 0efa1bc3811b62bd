"""hybridir: hybrid-batch training of multilingual dense retrievers (mT5, XLM-R) in JAX."""

__version__ = "0.1.0"


def load_encoder(path, **kwargs):
  """Loads a text encoder from a Hugging Face directory, a T5X checkpoint or an exported artifact."""
  from hybridir import export  # Imported lazily: keeps `import hybridir` cheap.
  return export.load_encoder(path, **kwargs)
