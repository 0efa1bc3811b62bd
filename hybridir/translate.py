"""`python -m hybridir.translate` runs hybridir.translation.translate; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.translation.translate", run_name="__main__", alter_sys=True)
