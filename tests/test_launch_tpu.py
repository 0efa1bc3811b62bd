"""Specification of `launch/tpu.sh`: the commands it prints or runs (on a fake gcloud), its errors."""
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "launch" / "tpu.sh"
BASH = shutil.which("bash")

# Logs its arguments as one JSON list a line; answers `config get-value project` and `describe` the way
# gcloud does (a describe of a missing TPU fails; after a create the TPU is READY / ACTIVE).
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
log_path = os.environ["FAKE_GCLOUD_LOG"]
created = os.path.exists(log_path) and any('"create"' in line for line in open(log_path))
with open(log_path, "a") as log:
  log.write(json.dumps(args) + "\\n")
if args[:3] == ["config", "get-value", "project"]:
  print("fake-project")
elif "describe" in args:
  state = os.environ.get("FAKE_TPU_STATE")
  if created:
    state = "ACTIVE" if "queued-resources" in args else "READY"
  if not state:
    sys.exit("ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: Resource not found")
  print(state)
elif "scp" in args and os.environ.get("FAKE_SCP_COPY"):
  shutil.copy(args[args.index("scp") + 1], os.environ["FAKE_SCP_COPY"])
elif "ssh" in args and any("hybridir.main" in arg for arg in args):
  sys.exit(int(os.environ.get("FAKE_JOB_EXIT_STATUS", "0")))
"""

PROJECT = ["--project=my-project", "--zone=us-central2-b"]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]

SETUP_COMMAND = "; ".join([
    "set -e",
    "rm -rf hybridir/src",
    "mkdir -p hybridir/src",
    "tar -xzf hybridir.tar.gz -C hybridir/src",
    "rm hybridir.tar.gz",
    "if [ ! -x hybridir/venv/bin/python ]; then python=python3",
    'python3 -c "import sys; sys.exit(sys.version_info < (3, 11))" || python=python3.11',
    "sudo apt-get -qq -o DPkg::Lock::Timeout=600 update",
    'sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y "$python" "$python-venv"',
    '"$python" -m venv hybridir/venv; fi',
    "cd hybridir/src",
    "../venv/bin/pip install --quiet --upgrade pip",
    "../venv/bin/pip install --quiet -e . 'jax[tpu]'",
])


def run_command(python_args, job="train", model_dir="gs://bucket/run"):
  """The command each worker runs: the job, tee'd to a local log that is then copied to MODEL_DIR."""
  return "; ".join([
      "set -o pipefail",
      "mkdir -p hybridir/logs",
      f"log=$PWD/hybridir/logs/{job}-$(date -u +%Y%m%dT%H%M%SZ)-$(hostname).log",
      "(cd hybridir/src && ../venv/bin/python -u -m hybridir.main "
      f'{shlex.join(python_args)}) 2>&1 | tee "$log"',
      "status=$?",
      f'gcloud storage cp "$log" {model_dir}/logs/ || echo "could not copy $log to the model dir" >&2',
      "exit $status",
  ])


TRAIN_ARGS = ["--gin_file=gin_configs/runs/train.gin", '--gin.MODEL_DIR="gs://bucket/run"',
              "--gin.TRAIN_STEPS=100", "--gin.MIXTURE='xquad_r'"]
TRAIN_OPTIONS = ["--gin_file", "gin_configs/runs/train.gin", "--model_dir", "gs://bucket/run/",
                 "--gin", "TRAIN_STEPS=100", "--gin", "MIXTURE='xquad_r'"]


# Enough for a run: the options each error test leaves out one of.
VALID = ["--name", "my-tpu", "--project", "my-project", "--zone", "us-central2-b",
         "--accelerator_type", "v4-8", "--gin_file", "gin_configs/runs/train.gin",
         "--model_dir", "gs://bucket/run"]


def tar_command(tarball, repo):
  return ["tar", "-czf", str(tarball), "--exclude=./.git", "--exclude=./.venv", "--exclude=./out",
          "--exclude=./runs", "--exclude=./.pytest_cache", "--exclude=__pycache__", "--exclude=*.egg-info",
          "-C", str(repo), "."]


def copy_and_run_commands(name, tarball, python_args=TRAIN_ARGS):
  return [
      [*TPU_VM, "scp", str(tarball), f"{name}:hybridir.tar.gz", *PROJECT, "--worker=all"],
      [*TPU_VM, "ssh", name, *PROJECT, "--worker=all", f"--command={SETUP_COMMAND}"],
      [*TPU_VM, "ssh", name, *PROJECT, "--worker=all", f"--command={run_command(python_args)}"],
  ]


@pytest.fixture
def code_repo(tmp_path):
  """A checkout to copy: the gin run files, a package, and things that must stay behind."""
  repo = tmp_path / "repo"
  for relative in ["gin_configs/runs/train.gin", "gin_configs/runs/eval.gin", "hybridir/__init__.py",
                   ".venv/bin/python", ".git/HEAD", "hybridir/__pycache__/x.pyc"]:
    (repo / relative).parent.mkdir(parents=True, exist_ok=True)
    (repo / relative).write_text("# test\n")
  return repo


@pytest.fixture
def env(tmp_path):
  """The fake gcloud first on PATH; its argument log at $FAKE_GCLOUD_LOG; $TMPDIR inside tmp_path."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "tmp").mkdir()
  return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path / "tmp"),
              FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"))


def launch(args, env):
  return subprocess.run([BASH, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                        timeout=60)


def gcloud_calls(env):
  path = pathlib.Path(env["FAKE_GCLOUD_LOG"])
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def printed(commands):
  return ["+ " + shlex.join(command) for command in commands]


def test_dry_run_on_a_single_host_v4_8_prints_every_command_and_runs_none(code_repo, env, tmp_path):
  result = launch(["--dry-run", "--name", "my-tpu", "--project", "my-project", "--zone", "us-central2-b",
                   "--accelerator_type", "v4-8", "--repo", code_repo, *TRAIN_OPTIONS], env)
  assert result.returncode == 0, result.stderr
  tarball = tmp_path / "tmp" / "hybridir-my-tpu.tar.gz"
  assert result.stdout.splitlines() == printed([
      [*TPU_VM, "describe", "my-tpu", *PROJECT, "--format=value(state)"],
      [*TPU_VM, "create", "my-tpu", *PROJECT, "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"],
      tar_command(tarball, code_repo),
      *copy_and_run_commands("my-tpu", tarball),
  ])
  assert gcloud_calls(env) == []
  assert not tarball.exists()


def test_dry_run_on_a_queued_spot_v4_32_pod_slice_prints_every_command(code_repo, env, tmp_path):
  result = launch(["--dry-run", "--name", "pod", "--project", "my-project", "--zone", "us-central2-b",
                   "--accelerator_type", "v4-32", "--spot", "--queued", "--repo", code_repo, *TRAIN_OPTIONS,
                   "--results_dir", tmp_path / "results", "--delete"], env)
  assert result.returncode == 0, result.stderr
  tarball = tmp_path / "tmp" / "hybridir-pod.tar.gz"
  assert result.stdout.splitlines() == printed([
      [*QUEUED, "describe", "pod", *PROJECT, "--format=value(state.state)"],
      [*QUEUED, "create", "pod", "--node-id=pod", *PROJECT, "--accelerator-type=v4-32",
       "--runtime-version=tpu-ubuntu2204-base", "--spot"],
      [*QUEUED, "describe", "pod", *PROJECT, "--format=value(state.state)"],
      tar_command(tarball, code_repo),
      *copy_and_run_commands("pod", tarball),
      ["mkdir", "-p", str(tmp_path / "results")],
      ["gcloud", "storage", "cp", "-r", "gs://bucket/run", str(tmp_path / "results")],
      [*QUEUED, "delete", "pod", *PROJECT, "--force", "--quiet"],
  ])
  assert gcloud_calls(env) == []
  assert not (tmp_path / "results").exists()


def test_run_calls_gcloud_with_exactly_these_arguments_in_order(code_repo, env, tmp_path):
  result = launch(["--name", "pod", "--zone", "us-central2-b", "--accelerator_type", "v4-32",
                   "--repo", code_repo, *TRAIN_OPTIONS, "--results_dir", tmp_path / "results", "--delete"],
                  env)
  assert result.returncode == 0, result.stderr
  project = ["--project=fake-project", "--zone=us-central2-b"]
  tarball = tmp_path / "tmp" / "hybridir-pod.tar.gz"
  assert gcloud_calls(env) == [
      ["config", "get-value", "project"],
      ["compute", "tpus", "tpu-vm", "describe", "pod", *project, "--format=value(state)"],
      ["compute", "tpus", "tpu-vm", "create", "pod", *project, "--accelerator-type=v4-32",
       "--version=tpu-ubuntu2204-base"],
      ["compute", "tpus", "tpu-vm", "scp", str(tarball), "pod:hybridir.tar.gz", *project, "--worker=all"],
      ["compute", "tpus", "tpu-vm", "ssh", "pod", *project, "--worker=all", f"--command={SETUP_COMMAND}"],
      ["compute", "tpus", "tpu-vm", "ssh", "pod", *project, "--worker=all",
       f"--command={run_command(TRAIN_ARGS)}"],
      ["storage", "cp", "-r", "gs://bucket/run", str(tmp_path / "results")],
      ["compute", "tpus", "tpu-vm", "delete", "pod", *project, "--quiet"],
  ]
  assert (tmp_path / "results").is_dir()
  assert not tarball.exists()


def test_copied_tarball_holds_the_checkout_without_git_virtualenv_or_caches(code_repo, env, tmp_path):
  copy = tmp_path / "copied.tar.gz"
  result = launch(["--name", "my-tpu", "--zone", "us-central2-b", "--accelerator_type", "v4-8",
                   "--repo", code_repo, *TRAIN_OPTIONS], dict(env, FAKE_SCP_COPY=str(copy)))
  assert result.returncode == 0, result.stderr
  with tarfile.open(copy) as tar:
    files = sorted(member.name for member in tar.getmembers() if member.isfile())
  assert files == ["./gin_configs/runs/eval.gin", "./gin_configs/runs/train.gin", "./hybridir/__init__.py"]


def test_a_ready_tpu_of_that_name_is_used_not_created(code_repo, env, tmp_path):
  result = launch(["--name", "my-tpu", "--project", "my-project", "--zone", "us-central2-b",
                   "--accelerator_type", "v4-8", "--repo", code_repo, *TRAIN_OPTIONS],
                  dict(env, FAKE_TPU_STATE="READY"))
  assert result.returncode == 0, result.stderr
  tarball = tmp_path / "tmp" / "hybridir-my-tpu.tar.gz"
  assert gcloud_calls(env) == [
      ["compute", "tpus", "tpu-vm", "describe", "my-tpu", *PROJECT, "--format=value(state)"],
      *[command[1:] for command in copy_and_run_commands("my-tpu", tarball)],
  ]


def test_a_preempted_tpu_is_deleted_and_created_again(code_repo, env):
  result = launch(["--name", "my-tpu", "--project", "my-project", "--zone", "us-central2-b",
                   "--accelerator_type", "v4-8", "--spot", "--repo", code_repo, *TRAIN_OPTIONS],
                  dict(env, FAKE_TPU_STATE="PREEMPTED"))
  assert result.returncode == 0, result.stderr
  assert gcloud_calls(env)[:3] == [
      ["compute", "tpus", "tpu-vm", "describe", "my-tpu", *PROJECT, "--format=value(state)"],
      ["compute", "tpus", "tpu-vm", "delete", "my-tpu", *PROJECT, "--quiet"],
      ["compute", "tpus", "tpu-vm", "create", "my-tpu", *PROJECT, "--accelerator-type=v4-8",
       "--version=tpu-ubuntu2204-base", "--spot"],
  ]


def test_reuse_neither_describes_nor_creates_the_tpu(code_repo, env, tmp_path):
  result = launch(["--reuse", "--name", "my-tpu", "--project", "my-project", "--zone", "us-central2-b",
                   "--repo", code_repo, *TRAIN_OPTIONS], env)
  assert result.returncode == 0, result.stderr
  tarball = tmp_path / "tmp" / "hybridir-my-tpu.tar.gz"
  assert gcloud_calls(env) == [command[1:] for command in copy_and_run_commands("my-tpu", tarball)]


def test_queued_run_waits_until_the_queued_resource_is_active(code_repo, env):
  result = launch(["--queued", "--name", "pod", "--project", "my-project", "--zone", "us-central2-b",
                   "--accelerator_type", "v5litepod-16", "--repo", code_repo, *TRAIN_OPTIONS], env)
  assert result.returncode == 0, result.stderr
  calls = gcloud_calls(env)
  assert calls[:3] == [
      ["compute", "tpus", "queued-resources", "describe", "pod", *PROJECT, "--format=value(state.state)"],
      ["compute", "tpus", "queued-resources", "create", "pod", "--node-id=pod", *PROJECT,
       "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite"],
      ["compute", "tpus", "queued-resources", "describe", "pod", *PROJECT, "--format=value(state.state)"],
  ]
  assert calls[3][:4] == ["compute", "tpus", "tpu-vm", "scp"]


def test_a_failed_job_still_copies_results_and_deletes_then_exits_with_its_status(code_repo, env, tmp_path):
  result = launch(["--name", "my-tpu", "--project", "my-project", "--zone", "us-central2-b",
                   "--accelerator_type", "v4-8", "--repo", code_repo, *TRAIN_OPTIONS,
                   "--results_dir", tmp_path / "results", "--delete"], dict(env, FAKE_JOB_EXIT_STATUS="3"))
  assert result.returncode == 3
  assert "exit status 3" in result.stderr
  assert gcloud_calls(env)[-2:] == [
      ["storage", "cp", "-r", "gs://bucket/run", str(tmp_path / "results")],
      ["compute", "tpus", "tpu-vm", "delete", "my-tpu", *PROJECT, "--quiet"],
  ]


def test_git_ref_clones_on_the_workers_instead_of_copying(env):
  result = launch(["--dry-run", "--reuse", "--name", "my-tpu", "--project", "my-project",
                   "--zone", "us-central2-b", "--git_ref", "v1.0", "--git_url", "https://example.com/h.git",
                   "--gin_file", "gin_configs/models/mt5_tiny.gin", "--model_dir", "gs://bucket/run"], env)
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
  assert [command[4] for command in commands] == ["ssh", "ssh"]
  setup = commands[0][-1]
  assert setup.startswith("--command=set -e; rm -rf hybridir/src; git clone --quiet https://example.com/h.git "
                          "hybridir/src; git -C hybridir/src checkout --quiet v1.0; if ")


def remote_home(tmp_path, python_exit_status=0):
  """A worker's home, locally: hybridir/venv/bin/{python,pip} record their arguments and cwd."""
  home = tmp_path / "home"
  (home / "hybridir" / "venv" / "bin").mkdir(parents=True)
  (home / "hybridir" / "src").mkdir()
  for tool in ["python", "pip"]:
    path = home / "hybridir" / "venv" / "bin" / tool
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(tmp_path / tool)!r} + '.calls', 'a').write("
                    "json.dumps([os.getcwd(), sys.argv[1:]]) + '\\n')\n"
                    f"print('step 1: loss 0.5')\nsys.exit({python_exit_status})\n")
    path.chmod(0o755)
  return home


def worker_commands(code_repo, env):
  """The --command of each `ssh --worker=all` that a dry run prints: the setup, then the job."""
  result = launch(["--dry-run", "--reuse", "--name", "my-tpu", "--project", "my-project",
                   "--zone", "us-central2-b", "--repo", code_repo, *TRAIN_OPTIONS], env)
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
  return [command[-1].removeprefix("--command=") for command in commands if "ssh" in command]


def remote_calls(tmp_path, tool):
  return [json.loads(line) for line in (tmp_path / f"{tool}.calls").read_text().splitlines()]


@pytest.mark.parametrize("python_exit_status", [0, 3])
def test_worker_command_passes_gin_flags_through_both_shells_and_keeps_the_log(code_repo, env, tmp_path,
                                                                                python_exit_status):
  home = remote_home(tmp_path, python_exit_status)
  [_, job_command] = worker_commands(code_repo, env)
  worker = subprocess.run([BASH, "-c", job_command], cwd=home, env=dict(env, HOME=str(home)),
                          capture_output=True, text=True, timeout=60)
  assert worker.returncode == python_exit_status
  assert worker.stdout == "step 1: loss 0.5\n"
  assert remote_calls(tmp_path, "python") == [[str(home / "hybridir" / "src"),
                                               ["-u", "-m", "hybridir.main", *TRAIN_ARGS]]]
  [log] = (home / "hybridir" / "logs").iterdir()
  assert log.name.startswith("train-") and log.read_text() == "step 1: loss 0.5\n"
  assert gcloud_calls(env) == [["storage", "cp", str(log), "gs://bucket/run/logs/"]]


def test_worker_setup_unpacks_a_fresh_copy_and_installs_it_with_jax_tpu(code_repo, env, tmp_path):
  home = remote_home(tmp_path)
  (home / "hybridir" / "src" / "stale").mkdir(parents=True)
  subprocess.run(["tar", "-czf", home / "hybridir.tar.gz", "-C", code_repo, "."], check=True)
  [setup_command, _] = worker_commands(code_repo, env)
  worker = subprocess.run([BASH, "-c", setup_command], cwd=home, env=dict(env, HOME=str(home)),
                          capture_output=True, text=True, timeout=60)
  assert worker.returncode == 0, worker.stderr
  assert (home / "hybridir" / "src" / "gin_configs" / "runs" / "train.gin").is_file()
  assert not (home / "hybridir" / "src" / "stale").exists()
  assert not (home / "hybridir.tar.gz").exists()
  src = str(home / "hybridir" / "src")
  assert remote_calls(tmp_path, "pip") == [[src, ["install", "--quiet", "--upgrade", "pip"]],
                                           [src, ["install", "--quiet", "-e", ".", "jax[tpu]"]]]


def without(options, name):
  index = options.index(name)
  return options[:index] + options[index + 2:]


def test_no_gcloud_on_path_is_an_error_naming_gcloud(code_repo, env, tmp_path):
  empty_bin = tmp_path / "empty_bin"
  empty_bin.mkdir()
  result = launch([*VALID, "--repo", code_repo], dict(env, PATH=str(empty_bin)))
  assert result.returncode != 0
  assert "gcloud not found on PATH" in result.stderr


@pytest.mark.parametrize("missing, message", [
    ("--zone", "missing --zone"),
    ("--model_dir", "missing --model_dir"),
    ("--name", "missing --name"),
    ("--gin_file", "missing --gin_file"),
])
def test_a_missing_option_is_an_error_naming_it(code_repo, env, missing, message):
  result = launch([*without(VALID, missing), "--repo", code_repo], env)
  assert result.returncode != 0
  assert message in result.stderr
  assert gcloud_calls(env) == []


def test_a_missing_gin_file_is_an_error_naming_it(code_repo, env):
  result = launch([*VALID, "--repo", code_repo, "--gin_file", "gin_configs/runs/typo.gin"], env)
  assert result.returncode != 0
  assert f"gin file 'gin_configs/runs/typo.gin' not found in {code_repo}" in result.stderr
  assert gcloud_calls(env) == []


def test_a_model_dir_outside_gcs_is_an_error(code_repo, env):
  result = launch([*without(VALID, "--model_dir"), "--model_dir", "/tmp/run", "--repo", code_repo], env)
  assert result.returncode != 0
  assert "--model_dir must be a gs:// path" in result.stderr


def test_an_unknown_option_is_an_error_naming_it(env):
  result = launch([*VALID, "--accelerator", "v4-8"], env)
  assert result.returncode != 0
  assert "unknown option '--accelerator'" in result.stderr


def test_help_lists_every_option(env):
  result = launch(["--help"], env)
  assert result.returncode == 0
  for option in ["--name", "--project", "--zone", "--accelerator_type", "--runtime_version", "--spot",
                 "--queued", "--reuse", "--repo", "--git_ref", "--gin_file", "--gin", "--model_dir",
                 "--results_dir", "--delete", "--dry-run"]:
    assert option in result.stdout


def test_shellcheck_finds_nothing():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (CI installs it: apt-get install -y shellcheck)")
  result = subprocess.run(["shellcheck", str(SCRIPT), str(SCRIPT.parent / "study_sweep.sh")],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout


# Stands in for `python -m hybridir.aot` under --check: logs ["python", cwd, args...] to the gcloud
# log (so the order of checks and gcloud calls shows) and exits with $FAKE_AOT_EXIT_STATUS.
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(["python", os.getcwd(), *sys.argv[1:]]) + "\\n")
print('{{"fits": false}}')
sys.exit(int(os.environ.get("FAKE_AOT_EXIT_STATUS", "0")))
"""
CHECK_ARGS = ["-m", "hybridir.aot", "--accelerator_type=v4-32", *TRAIN_ARGS]


@pytest.fixture
def check_env(env, tmp_path):
  python = tmp_path / "bin" / "fake-python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  return dict(env, PYTHON=str(python))


def test_check_compiles_the_run_before_creating_the_tpu(code_repo, check_env):
  result = launch(["--check", "--name", "pod", "--zone", "us-central2-b", "--accelerator_type",
                   "v4-32", "--repo", code_repo, *TRAIN_OPTIONS], check_env)
  assert result.returncode == 0, result.stderr
  calls = gcloud_calls(check_env)
  assert calls[:2] == [["config", "get-value", "project"], ["python", str(code_repo), *CHECK_ARGS]]
  assert calls[3][:5] == ["compute", "tpus", "tpu-vm", "create", "pod"]
  assert "the run fits v4-32" in result.stderr


def test_check_refuses_to_create_a_tpu_for_a_run_that_does_not_fit(code_repo, check_env):
  result = launch(["--check", "--name", "pod", "--zone", "us-central2-b", "--accelerator_type",
                   "v4-32", "--repo", code_repo, *TRAIN_OPTIONS],
                  dict(check_env, FAKE_AOT_EXIT_STATUS="3"))
  assert result.returncode == 2
  assert "the run does not fit v4-32 (report above); no TPU created" in result.stderr
  assert [call[0] for call in gcloud_calls(check_env)] == ["config", "python"]


def test_check_dry_run_shows_the_compile_before_any_gcloud_create(code_repo, check_env, tmp_path):
  result = launch(["--check", "--dry-run", "--name", "pod", "--project", "my-project", "--zone",
                   "us-central2-b", "--accelerator_type", "v4-32", "--repo", code_repo,
                   *TRAIN_OPTIONS], check_env)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[:3] == printed([
      [check_env["PYTHON"], *CHECK_ARGS],
      [*TPU_VM, "describe", "pod", *PROJECT, "--format=value(state)"],
      [*TPU_VM, "create", "pod", *PROJECT, "--accelerator-type=v4-32",
       "--version=tpu-ubuntu2204-base"]])
  assert gcloud_calls(check_env) == []


def test_check_needs_the_accelerator_type(code_repo, check_env):
  result = launch(["--check", "--reuse", "--name", "pod", "--project", "my-project", "--zone",
                   "us-central2-b", "--repo", code_repo, *TRAIN_OPTIONS], check_env)
  assert result.returncode == 2
  assert "--check needs --accelerator_type" in result.stderr
