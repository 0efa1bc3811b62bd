"""`python -m hybridir.study_gather` runs hybridir.study.study_gather; imported, this entry point
does nothing (import that module for its functions)."""
import runpy

if __name__ == "__main__":
  runpy.run_module("hybridir.study.study_gather", run_name="__main__", alter_sys=True)
