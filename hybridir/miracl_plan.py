"""`python -m hybridir.miracl_plan` runs hybridir.cloud.miracl_plan; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.cloud.miracl_plan", run_name="__main__", alter_sys=True)
