"""`python -m hybridir.mmarco`: runs hybridir/data/mmarco.py."""
import runpy

runpy.run_module("hybridir.data.mmarco", run_name="__main__", alter_sys=True)
