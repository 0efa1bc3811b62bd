"""`python -m hybridir.aot` runs hybridir.cloud.aot; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.cloud.aot", run_name="__main__", alter_sys=True)
