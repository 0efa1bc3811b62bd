"""`python -m hybridir.mmarco` runs hybridir.data.mmarco; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.data.mmarco", run_name="__main__", alter_sys=True)
