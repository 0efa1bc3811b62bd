"""hybridir.fs: one layer for local paths and gs:// (the latter on a local GCS emulator)."""
import os
import stat
import uuid

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util
import pytest

from hybridir.data import corpora
from hybridir import fs
from hybridir.training import summaries


@pytest.fixture
def umask_022():
  previous = os.umask(0o022)
  yield
  os.umask(previous)


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
  """A fresh output folder on local disk, then on the emulator's bucket."""
  if request.param == "local":
    return str(tmp_path)
  return f"{request.getfixturevalue('gcs_bucket')}/{uuid.uuid4().hex}"


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_give_outputs_normal_permissions(tmp_path, umask_022):
  fs.write_text_atomically(tmp_path / "a.json", "{}")
  with fs.atomic_directory(tmp_path / "artifact", marker="manifest.json") as temporary:
    os.makedirs(os.path.join(temporary, "params"))
    fs.write_text_atomically(os.path.join(temporary, "params", "x"), "1")
    fs.write_text_atomically(os.path.join(temporary, "manifest.json"), "{}")
  assert _mode(tmp_path / "a.json") == 0o644
  assert _mode(tmp_path / "artifact") == 0o755
  assert _mode(tmp_path / "artifact" / "params") == 0o755
  assert _mode(tmp_path / "artifact" / "manifest.json") == 0o644
  assert [f for f in os.listdir(tmp_path) if f != "a.json" and f != "artifact"] == []


def test_text_round_trips_and_lists(root):
  fs.write_text_atomically(f"{root}/sub/b.txt", "bé")
  fs.write_text_atomically(f"{root}/sub/a.txt", "first")
  fs.write_text_atomically(f"{root}/sub/a.txt", "second")  # Replaces.
  assert fs.read_text(f"{root}/sub/a.txt") == "second"
  assert fs.read_text(f"{root}/sub/b.txt") == "bé"
  assert fs.listdir(f"{root}/sub") == ["a.txt", "b.txt"]
  assert fs.isdir(f"{root}/sub") and fs.isfile(f"{root}/sub/a.txt")
  assert not fs.exists(f"{root}/missing")


def test_failed_directory_write_leaves_the_old_output(root):
  fs.write_text_atomically(f"{root}/out/manifest.json", "old")
  with pytest.raises(RuntimeError, match="crash"):
    with fs.atomic_directory(f"{root}/out", marker="manifest.json") as temporary:
      fs.write_text_atomically(os.path.join(temporary, "manifest.json"), "new")
      raise RuntimeError("crash")
  assert fs.listdir(f"{root}/out") == ["manifest.json"]
  assert fs.read_text(f"{root}/out/manifest.json") == "old"


def test_directory_write_replaces_old_files(root):
  fs.write_text_atomically(f"{root}/out/stale.bin", "old")
  fs.write_text_atomically(f"{root}/out/manifest.json", "old")
  with fs.atomic_directory(f"{root}/out", marker="manifest.json") as temporary:
    fs.write_text_atomically(os.path.join(temporary, "data", "x.bin"), "data")
    fs.write_text_atomically(os.path.join(temporary, "manifest.json"), "new")
  assert fs.listdir(f"{root}/out") == ["data", "manifest.json"]
  assert fs.read_text(f"{root}/out/manifest.json") == "new"
  assert fs.read_text(f"{root}/out/data/x.bin") == "data"


def test_remote_directory_deletes_the_old_marker_first_and_uploads_the_new_one_last(
    gcs_bucket, monkeypatch):
  out = f"{gcs_bucket}/{uuid.uuid4().hex}/out"
  fs.write_text_atomically(f"{out}/manifest.json", "old")
  events = []
  write, rmtree = fs.write_bytes_atomically, fs.rmtree
  monkeypatch.setattr(fs, "write_bytes_atomically", lambda p, data: (
      events.append(("write", os.fspath(p).rsplit("/", 1)[1])), write(p, data)))
  monkeypatch.setattr(fs, "rmtree", lambda p: (
      events.append(("rmtree", fs.exists(f"{out}/manifest.json"))), rmtree(p)))
  with fs.atomic_directory(out, marker="manifest.json") as temporary:
    for name in ("manifest.json", "a.bin", "z.bin"):
      with open(os.path.join(temporary, name), "w") as f:
        f.write(name)
  # The old marker was already gone when the old files were removed; the new one came last.
  assert events == [("rmtree", False), ("write", "a.bin"), ("write", "z.bin"),
                    ("write", "manifest.json")]


def test_summaries_are_read_back_by_tensorboard(root, tmp_path):
  writer = summaries.SummaryWriter(f"{root}/train", max_file_bytes=200)
  for step in range(1, 6):
    writer.write(step, {"loss": 1.0 / step, "accuracy": step / 10})
  names = fs.listdir(f"{root}/train")
  assert len(names) > 1 and all(n.startswith("events.out.tfevents.") for n in names)
  local = tmp_path / "downloaded"
  for name in names:  # TensorBoard reads gs:// through tf.io.gfile: read a local copy here.
    fs.copy_file(f"{root}/train/{name}", local / name)
  accumulator = event_accumulator.EventAccumulator(str(local))
  accumulator.Reload()
  def scalars(tag):  # tf.summary.scalar's form: a scalar tensor with the 'scalars' plugin.
    assert accumulator.summary_metadata[tag].plugin_data.plugin_name == "scalars"
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in accumulator.Tensors(tag)]
  assert scalars("loss") == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
  assert scalars("accuracy") == [(s, pytest.approx(s / 10)) for s in range(1, 6)]


def test_corpus_reads_the_same_from_gcs(gcs_bucket, data_dir):
  folder = f"{gcs_bucket}/{uuid.uuid4().hex}/xquad-r"
  for language in ("en", "de"):
    fs.copy_file(data_dir / "xquad-r" / f"{language}.json", f"{folder}/{language}.json")
  remote = corpora.load_parallel_corpus(folder)
  local = corpora.load_parallel_corpus(data_dir / "xquad-r", languages=["en", "de"])
  assert remote.pairs == local.pairs and len(remote.pairs["de"]) == 1190


def test_missing_remote_corpus_is_named(gcs_bucket):
  with pytest.raises(corpora.CorpusError, match=f"{gcs_bucket}/nothing-here: no such file"):
    corpora.load_parallel_corpus(f"{gcs_bucket}/nothing-here")


def test_abspath_keeps_urls():
  assert fs.abspath("gs://b/x") == "gs://b/x"
  assert fs.abspath("x") == os.path.join(os.getcwd(), "x")


def test_check_writable_accepts_a_new_folder_and_creates_nothing(root):
  fs.check_writable(f"{root}/new/run", "MODEL_DIR")
  fs.check_writable(f"{root}/new/spm", "--output", kind="file")
  assert not fs.exists(f"{root}/new")
  assert not fs.exists(root) or fs.listdir(root) == []


def test_check_writable_names_the_parameter_and_path_beneath_a_file(tmp_path):
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(fs.NotWritableError) as error:
    fs.check_writable(tmp_path / "a_file" / "run", "MODEL_DIR")
  assert str(error.value) == (f"MODEL_DIR: cannot write to {tmp_path}/a_file/run: "
                              f"{tmp_path}/a_file is a file, not a folder")
  with pytest.raises(fs.NotWritableError, match="it is a folder, not a file"):
    fs.check_writable(tmp_path, "--output", kind="file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
  os.chmod(tmp_path, 0o555)
  try:
    with pytest.raises(fs.NotWritableError, match=f"EVAL_DIR: cannot write to {tmp_path}/eval: "
                       "Permission denied"):
      fs.check_writable(tmp_path / "eval", "EVAL_DIR")
  finally:
    os.chmod(tmp_path, 0o755)


def test_check_writable_refuses_a_bucket_that_does_not_exist(gcs_bucket):
  with pytest.raises(fs.NotWritableError, match="^EXPORT_DIR: cannot write to "
                     "gs://no-such-bucket-hybridir/export: "):
    fs.check_writable("gs://no-such-bucket-hybridir/export", "EXPORT_DIR")
