"""`python -m hybridir.evaluate`: runs hybridir/evaluation/evaluate.py."""
import runpy

runpy.run_module("hybridir.evaluation.evaluate", run_name="__main__", alter_sys=True)
