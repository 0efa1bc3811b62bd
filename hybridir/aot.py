"""`python -m hybridir.aot`: runs hybridir/cloud/aot.py."""
import runpy

runpy.run_module("hybridir.cloud.aot", run_name="__main__", alter_sys=True)
