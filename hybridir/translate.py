"""`python -m hybridir.translate`: runs hybridir/translation/translate.py."""
import runpy

runpy.run_module("hybridir.translation.translate", run_name="__main__", alter_sys=True)
