"""The error every stage raises for a setting out of its range: commands show it as one line.

Files and records have their own errors (`corpora.CorpusError`, `artifacts.ArtifactError`, ...);
this one is for the settings a run is given (a function's argument, a config field, a gin macro).
"""


class SettingError(ValueError):
  """A setting the run cannot use; the message names it and the value found, so
  `hybridir.main` shows it as one line `error: ...` without a traceback."""
