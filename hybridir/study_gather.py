"""`python -m hybridir.study_gather`: runs hybridir/study/study_gather.py."""
import runpy

runpy.run_module("hybridir.study.study_gather", run_name="__main__", alter_sys=True)
