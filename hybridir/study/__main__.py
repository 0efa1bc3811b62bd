"""`python -m hybridir.study`: runs hybridir/study/demo.py."""
import runpy

runpy.run_module("hybridir.study.demo", run_name="__main__", alter_sys=True)
