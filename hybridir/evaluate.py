"""`python -m hybridir.evaluate` runs hybridir.evaluation.evaluate; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.evaluation.evaluate", run_name="__main__", alter_sys=True)
