"""`python -m hybridir.spm`: runs hybridir/data/spm.py."""
import runpy

runpy.run_module("hybridir.data.spm", run_name="__main__", alter_sys=True)
