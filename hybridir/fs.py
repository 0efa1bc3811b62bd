"""Every file hybridir reads or writes goes through here: local paths and gs:// alike.

Paths are `etils.epath` paths (the library orbax itself uses), with gs:// served by fsspec's gcsfs
and never by tf.io.gfile, which cannot be pointed at a GCS emulator. `STORAGE_EMULATOR_HOST`,
the variable Google's client libraries read, is mapped to what each library needs: gcsfs reads
it itself (we add anonymous credentials), tensorstore (orbax's arrays) gets
`TENSORSTORE_GCS_HTTP_URL`.

Atomic writes. Local: write a temporary file beside the target, then rename. Object stores have
no rename, but an object appears only when its upload completes and replaces the old one whole,
so one file is written as one upload. A directory is staged on local disk and uploaded file by
file with its completion marker last (after deleting the old marker first); readers trust only
a directory whose marker exists. Output files get the usual permissions (0666/0777 less umask).
"""
import builtins
import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import uuid
from typing import Iterator

from etils import epath

PathLike = str | os.PathLike
DATA_DIR_VARIABLE = "HYBRIDIR_DATA_DIR"


def data_root() -> str:
  """The shared data folder (xquad-r/, mlqa-r/): $HYBRIDIR_DATA_DIR, else ../shared/data, relative
  to the working directory (beside the project when run from its root), as gin paths are."""
  return os.environ.get(DATA_DIR_VARIABLE) or os.path.join("..", "shared", "data")


def configure() -> None:
  """Routes gs:// through gcsfs, and to the emulator when STORAGE_EMULATOR_HOST names one."""
  os.environ["EPATH_USE_TF"] = "false"  # epath would pick tf.io.gfile for gs:// otherwise.
  # gcsfs's experimental bucket-type probe speaks gRPC, which the emulator does not: core client.
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  import fsspec  # pylint: disable=g-import-not-at-top
  options = fsspec.config.conf.setdefault("gcs", {})
  # Arrays are written by tensorstore behind gcsfs's back: never trust a cached listing.
  options["use_listings_cache"] = False
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    url = emulator if "://" in emulator else f"http://{emulator}"
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    options["token"] = "anon"


configure()


def is_remote(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
  """An epath.Path: pathlib's API, for local paths and gs:// URLs."""
  configure()  # Cheap; follows STORAGE_EMULATOR_HOST even when set after import.
  return epath.Path(p)


def abspath(p: PathLike) -> str:
  """The absolute form of a local path; a URL unchanged."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  p = path(p)
  return p.exists() and not p.is_dir()


def listdir(p: PathLike) -> list[str]:
  """Names (not paths) of a directory's entries, sorted."""
  return sorted(child.name for child in path(p).iterdir())


def glob(pattern: PathLike) -> list[str]:
  """Paths matching `pattern`, whose wildcards are in its last part (`folder/docs-*.jsonl.gz`),
  sorted with the numbers in names compared as numbers (docs-2 before docs-10)."""
  folder, name = os.path.split(os.fspath(pattern))
  if not exists(folder or "."):
    return []
  found = [os.fspath(child) for child in path(folder or ".").glob(name)]
  return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])


def makedirs(p: PathLike) -> None:
  """Creates a local directory and its parents; nothing for an object store, which has none
  (gcsfs would look up, or even try to create, the bucket)."""
  if not is_remote(p):
    path(p).mkdir(parents=True, exist_ok=True)


def rmtree(p: PathLike) -> None:
  if exists(p):
    path(p).rmtree()


def open(p: PathLike, mode: str = "r", **kwargs):  # pylint: disable=redefined-builtin
  return path(p).open(mode, **kwargs)


@contextlib.contextmanager
def open_bytes(p: PathLike) -> Iterator[io.BufferedIOBase]:
  """A file open for reading bytes, gunzipped as it is read when its name ends in .gz (the
  reader decodes, so a bad byte is named by its line)."""
  with open(p, "rb") as raw:
    if not os.fspath(p).endswith(".gz"):
      yield raw
      return
    with gzip.open(raw, "rb") as f:
      yield f


def read_text(p: PathLike) -> str:
  return path(p).read_text(encoding="utf-8")


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def _umask() -> int:
  """The process umask, read without changing it (Linux), else by the set-and-restore idiom."""
  try:
    with builtins.open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def normal_permissions(local_path: str) -> None:
  """0666 (files) or 0777 (directories) less the umask, as open() and mkdir() would give;
  tempfile's 0600/0700 is right for scratch space but wrong for outputs others read."""
  mode = 0o777 if os.path.isdir(local_path) else 0o666
  os.chmod(local_path, mode & ~_umask())


def write_bytes_atomically(p: PathLike, data: bytes) -> None:
  """Writes a whole file so that readers see the old content or the new, never a part."""
  p = os.fspath(p)
  if is_remote(p):
    path(p).write_bytes(data)  # One upload: the object appears complete or not at all.
    return
  directory = os.path.dirname(os.path.abspath(p))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", suffix=".tmp",
                                       dir=directory)
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    normal_permissions(temporary)
    os.replace(temporary, p)
  except OSError as e:  # A full disk names no file of its own: name the one being written.
    raise OSError(e.errno, e.strerror, p) from None
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  descriptor = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(descriptor)  # The rename itself survives a power cut.
  finally:
    os.close(descriptor)


def write_text_atomically(p: PathLike, text: str) -> None:
  write_bytes_atomically(p, text.encode("utf-8"))


def copy_file(source: PathLike, destination: PathLike) -> None:
  """Copies one file, atomically at the destination, between any two places."""
  write_bytes_atomically(destination, read_bytes(source))


@contextlib.contextmanager
def atomic_output(p: PathLike) -> Iterator[str]:
  """Yields a local temporary file for a library that writes only to local paths; its content
  becomes `p` (atomically, as write_bytes_atomically) only if the block succeeds."""
  handle, temporary = tempfile.mkstemp(suffix=os.path.splitext(os.fspath(p))[1])
  os.close(handle)
  try:
    yield temporary
    copy_file(temporary, p)
  finally:
    os.remove(temporary)


def upload_tree(local_dir: str, destination: PathLike, marker: str) -> None:
  """Copies a local directory to `destination` (a URL), its `marker` file last."""
  files = sorted(os.path.relpath(os.path.join(root, name), local_dir)
                 for root, _, names in os.walk(local_dir) for name in names)
  if marker not in files:
    raise ValueError(f"{local_dir}: no completion marker {marker!r} to write last")
  destination = os.fspath(destination).rstrip("/")
  for name in [f for f in files if f != marker] + [marker]:
    with builtins.open(os.path.join(local_dir, name), "rb") as f:
      write_bytes_atomically(f"{destination}/{name}", f.read())


@contextlib.contextmanager
def atomic_directory(output_dir: PathLike, marker: str) -> Iterator[str]:
  """Yields a local directory that becomes `output_dir` (replacing it) only on success.

  Local: a temporary sibling renamed into place. Remote: the old marker is deleted first (the
  old directory stops counting as complete), the old files next, then the new files are
  uploaded with `marker` last, so a crash never leaves a complete-looking directory.
  """
  output_dir = abspath(output_dir).rstrip("/")
  remote = is_remote(output_dir)
  parent = tempfile.gettempdir() if remote else os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  temporary = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".tmp-", dir=parent)
  try:
    yield temporary
    if remote:
      if exists(f"{output_dir}/{marker}"):
        path(f"{output_dir}/{marker}").unlink()
      rmtree(output_dir)
      upload_tree(temporary, output_dir, marker)
      return
    for root, directories, names in os.walk(temporary):
      for name in directories + names:
        normal_permissions(os.path.join(root, name))
    normal_permissions(temporary)
    if os.path.exists(output_dir) and os.listdir(output_dir):
      old = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".old-", dir=parent)
      os.rename(output_dir, os.path.join(old, "replaced"))
      os.rename(temporary, output_dir)
      shutil.rmtree(old)
    else:
      os.rename(temporary, output_dir)  # Replaces an empty directory atomically.
  finally:
    if os.path.exists(temporary):
      shutil.rmtree(temporary)


class NotWritableError(OSError):
  """An output location cannot be written; the message names the parameter and the path."""


def _nearest_existing(p: str) -> str:
  """`p` itself when it exists, else its closest existing ancestor (local paths)."""
  while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
  return p


def check_writable(p: PathLike, what: str, kind: str = "directory") -> None:
  """Fails with one line naming `what` (the parameter) and `p` unless outputs can go there.

  `kind` "directory": files will be written inside `p` (created if missing); "file": `p` itself
  will be written (a file, or a prefix of files, in its parent). A small probe file is written
  and deleted where the outputs go (the closest existing folder; on gs:// the folder itself, as
  object stores have no folders), so permissions, read-only disks and missing buckets all show.
  Nothing is created.
  """
  if kind not in ("directory", "file"):
    raise ValueError(f"check_writable kind must be 'directory' or 'file', found {kind!r}")
  p = abspath(p).rstrip("/") or "/"
  try:
    _probe(p, kind)
  except NotWritableError as e:
    raise NotWritableError(f"{what}: cannot write to {p}: {e}") from None
  except OSError as e:
    raise NotWritableError(f"{what}: cannot write to {p}: {e.strerror or e}") from None
  except Exception as e:  # pylint: disable=broad-except  # An object store's own error.
    reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    raise NotWritableError(f"{what}: cannot write to {p}: {reason}") from None


def _probe(p: str, kind: str) -> None:
  """Writes and deletes a probe file where outputs of `p` go; NotWritableError says why not."""
  if kind == "directory" and isfile(p):
    raise NotWritableError("it is a file, not a folder")
  if kind == "file" and isdir(p):
    raise NotWritableError("it is a folder, not a file")
  folder = p if kind == "directory" else p.rsplit("/", 1)[0]
  if not is_remote(p):
    folder = _nearest_existing(folder)
    if not os.path.isdir(folder):
      raise NotWritableError(f"{folder} is a file, not a folder")
  probe = f"{folder.rstrip('/')}/hybridir-write-probe-{uuid.uuid4().hex}"
  try:
    if is_remote(probe):
      path(probe).write_bytes(b"")
      path(probe).unlink()
    else:
      builtins.open(probe, "wb").close()
      os.remove(probe)
  except OSError as e:
    raise NotWritableError(f"{e.strerror or e} (in {folder})") from None


def local_copy(p: PathLike) -> str:
  """A local path with the file's content: the path itself when local, else a cached download
  named by content hash (for libraries that read only local files or only through gfile)."""
  p = os.fspath(p)
  if not is_remote(p):
    return p
  data = read_bytes(p)
  digest = hashlib.sha256(data).hexdigest()[:16]
  local = os.path.join(tempfile.gettempdir(), "hybridir-cache", digest, os.path.basename(p))
  if not os.path.exists(local):
    write_bytes_atomically(local, data)
  return local
