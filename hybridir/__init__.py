"""hybridir: hybrid-batch training of multilingual dense retrievers (mT5, XLM-R) in JAX."""
from hybridir import console
from hybridir import version

__version__ = version.VERSION

# Before any of hybridir's modules loads jax or TensorFlow: no accelerator probing on a CPU-only
# machine, no load-time lines (console.quiet_start).
console.quiet_start()


def load_encoder(path, **kwargs):
  """Loads a text encoder from a Hugging Face directory, a T5X checkpoint or an exported artifact."""
  from hybridir.export import exporter  # Lazily: keeps `import hybridir` cheap.
  return exporter.load_encoder(path, **kwargs)
