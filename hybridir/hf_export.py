"""`python -m hybridir.hf_export` runs hybridir.export.hf_export; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.export.hf_export", run_name="__main__", alter_sys=True)
