"""`python -m hybridir.study_report`: runs hybridir/study/study_report.py."""
import runpy

runpy.run_module("hybridir.study.study_report", run_name="__main__", alter_sys=True)
