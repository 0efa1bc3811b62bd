"""`python -m hybridir.miracl_plan`: runs hybridir/cloud/miracl_plan.py."""
import runpy

runpy.run_module("hybridir.cloud.miracl_plan", run_name="__main__", alter_sys=True)
