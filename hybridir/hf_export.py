"""`python -m hybridir.hf_export`: runs hybridir/export/hf_export.py."""
import runpy

runpy.run_module("hybridir.export.hf_export", run_name="__main__", alter_sys=True)
