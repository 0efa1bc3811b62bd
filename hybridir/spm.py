"""`python -m hybridir.spm` runs hybridir.data.spm; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.data.spm", run_name="__main__", alter_sys=True)
