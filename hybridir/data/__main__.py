"""`python -m hybridir.data`: runs hybridir/data/describe.py."""
import runpy

runpy.run_module("hybridir.data.describe", run_name="__main__", alter_sys=True)
