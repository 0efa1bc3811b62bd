#!/usr/bin/env bash
# Runs one gin-configured hybridir job (train, eval or export) on a Cloud TPU VM or pod slice:
# create or reuse the TPU, copy the code to every worker, install it, run the same command on every
# worker, then optionally copy the results home and delete the TPU. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh --name NAME --zone ZONE --accelerator_type TYPE --model_dir gs://BUCKET/DIR
                     --gin_file FILE [--gin_file FILE ...] [--gin KEY=VALUE ...] [options]

Runs `python -m hybridir.main --gin_file=FILE ... --gin.MODEL_DIR="DIR" --gin.KEY=VALUE ...` on every
worker of a Cloud TPU VM or pod slice. Rerunning the same command resumes from the last checkpoint.

TPU:
  --name NAME               TPU (and queued resource) name; lowercase letters, digits and hyphens
  --project PROJECT         default: `gcloud config get-value project`
  --zone ZONE               e.g. us-central2-b
  --accelerator_type TYPE   e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8
  --runtime_version VERSION default by family: tpu-ubuntu2204-base (v2, v3, v4),
                            v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
  --spot                    create a Spot TPU (cheaper, may be preempted; rerun to resume)
  --queued                  create through `gcloud compute tpus queued-resources` and wait for it
  --reuse                   run on the existing TPU NAME; never describe, create or recreate it
                            (without --reuse: a READY TPU NAME is reused, a preempted one recreated)
  --delete                  delete the TPU when the job ends, whether it succeeded or not
  --check                   first compile the training run for --accelerator_type on this machine
                            (python -m hybridir.aot, with $PYTHON, default python3; needs
                            pip install -e '.[aot]') and create nothing if it does not fit

Code (one of):
  --repo PATH               local checkout to copy to the workers (default: this repository)
  --git_ref REF             clone REF on the workers instead of copying a local checkout
  --git_url URL             repository to clone with --git_ref (default: the local `origin` remote)

Job:
  --gin_file FILE           gin file relative to the repository root; repeatable, at least one
  --gin KEY=VALUE           gin binding, passed as --gin.KEY=VALUE; repeatable. KEY is a macro
                            a gin file declares (TRAIN_STEPS) or a parameter
                            (trainer.train.log_period); a string takes gin's quotes inside the
                            shell's:
                            --gin "CORPUS_DIR='gs://BUCKET/xquad-r'" --gin TRAIN_STEPS=20000
  --model_dir gs://...      where checkpoints, metrics and logs go (bound as MODEL_DIR); required
  --results_dir PATH        copy the model dir here when the job ends (gcloud storage cp -r)

  --dry-run                 print each command, prefixed with "+ ", instead of running it; the only
                            command run is `gcloud config get-value project` when --project is not
                            given. A dry run assumes the TPU does not exist yet (unless --reuse).
  -h, --help                show this help

Exit status:
  0                         the job succeeded on every worker
  2                         a mistake in these options (one line `launch/tpu.sh: error: ...`), or
                            --check found the run does not fit or could not compile it; nothing
                            was created
  other                     the job's status as `gcloud ... ssh --worker=all` reports it
                            (hybridir.main: 1 for an error, its one line `error: ...` in the
                            log; 143 when preempted after saving its checkpoint: rerun to
                            resume), or that of a gcloud step that failed (create, copy, install)

If copying or installing fails the script stops and leaves the TPU up, so you can look at it.
The job lives as long as the ssh session: launch from tmux or screen for long runs.
EOF
}

readonly REMOTE_DIR=hybridir            # on each worker, relative to the ssh user's home
readonly REMOTE_TARBALL=hybridir.tar.gz # likewise
readonly QUEUED_POLL_SECONDS=60

name="" project="" zone="" accelerator_type="" runtime_version=""
spot=0 queued=0 reuse=0 delete=0 dry_run=0 check=0
repo="" git_ref="" git_url="" model_dir="" results_dir=""
gin_files=() gin_bindings=() location_flags=()
query_output="" tarball=""

die() {
  printf 'launch/tpu.sh: error: %s\n' "$*" >&2
  exit 2
}

note() {
  printf 'launch/tpu.sh: %s\n' "$*" >&2
}

# Prints ARG so that a POSIX shell reads it back unchanged (the same quoting as Python's shlex.quote).
quote() {
  local arg=$1
  if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$arg"
  else
    printf "'%s'" "${arg//\'/\'\"\'\"\'}"
  fi
}

# Prints "+ COMMAND ARGS..." quoted, on one line.
print_command() {
  local line="+" arg
  for arg in "$@"; do
    line+=" $(quote "$arg")"
  done
  printf '%s\n' "$line"
}

# Runs a command, or in a dry run only prints it (to stdout; to stderr when it runs).
run() {
  if ((dry_run)); then
    print_command "$@"
    return 0
  fi
  print_command "$@" >&2
  "$@"
}

# Like run, but keeps the command's stdout in $query_output (empty if it fails or in a dry run).
query() {
  query_output=""
  if ((dry_run)); then
    print_command "$@"
    return 0
  fi
  print_command "$@" >&2
  query_output=$("$@" 2>/dev/null) || query_output=""
}

# Reads --option VALUE or --option=VALUE for the options that take a value; fails naming the option.
parse_args() {
  local option value
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --spot) spot=1; shift; continue ;;
      --queued) queued=1; shift; continue ;;
      --reuse) reuse=1; shift; continue ;;
      --delete) delete=1; shift; continue ;;
      --check) check=1; shift; continue ;;
      --dry-run | --dry_run) dry_run=1; shift; continue ;;
    esac
    option=${1%%=*}
    case $option in
      --name | --project | --zone | --accelerator_type | --runtime_version | --repo | --git_ref \
        | --git_url | --gin_file | --gin | --model_dir | --results_dir) ;;
      --spot | --queued | --reuse | --delete | --check | --dry-run | --dry_run)
        die "$option takes no value" ;;
      *) die "unknown option '$option' (see --help)" ;;
    esac
    if [[ $1 == *=* ]]; then
      value=${1#*=}
      shift
    elif (($# >= 2)) && [[ $2 != --* ]]; then
      value=$2
      shift 2
    else
      die "$option needs a value (see --help)"
    fi
    case $option in
      --name) name=$value ;;
      --project) project=$value ;;
      --zone) zone=$value ;;
      --accelerator_type) accelerator_type=$value ;;
      --runtime_version) runtime_version=$value ;;
      --repo) repo=$value ;;
      --git_ref) git_ref=$value ;;
      --git_url) git_url=$value ;;
      --gin_file) gin_files+=("$value") ;;
      --gin) gin_bindings+=("$value") ;;
      --model_dir) model_dir=$value ;;
      --results_dir) results_dir=$value ;;
    esac
  done
}

default_runtime_version() {
  case ${accelerator_type%%-*} in
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
    v5litepod | v5e) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime for --accelerator_type $accelerator_type; pass --runtime_version" ;;
  esac
}

validate() {
  local binding gin_file
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  [[ -n $name ]] || die "missing --name (the TPU name)"
  [[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$name' must be lowercase letters, digits and hyphens, starting with a letter"
  [[ -n $zone ]] || die "missing --zone (e.g. --zone us-central2-b)"
  if ((!reuse)); then
    [[ -n $accelerator_type ]] || die "missing --accelerator_type (e.g. v4-8)"
    [[ -n $runtime_version ]] || runtime_version=$(default_runtime_version)
  fi
  if ((check)); then
    [[ -n $accelerator_type ]] || die "--check needs --accelerator_type (the slice to compile for)"
  fi
  [[ -n $model_dir ]] || die "missing --model_dir (a gs:// path for checkpoints and logs)"
  [[ $model_dir == gs://?* ]] ||
    die "--model_dir must be a gs:// path the TPU workers can write, got '$model_dir'"
  model_dir=${model_dir%/}
  ((${#gin_files[@]})) || die "missing --gin_file (e.g. --gin_file gin_configs/runs/train.gin)"
  for binding in ${gin_bindings[@]+"${gin_bindings[@]}"}; do
    [[ $binding == ?*=* ]] || die "--gin '$binding' is not KEY=VALUE"
  done
  if [[ -n $git_ref ]]; then
    [[ -z $repo ]] || die "--repo and --git_ref exclude each other"
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  else
    [[ -z $git_url ]] || die "--git_url needs --git_ref"
    [[ -n $repo ]] || repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    [[ -d $repo ]] || die "--repo '$repo' is not a directory"
  fi
  for gin_file in "${gin_files[@]}"; do
    [[ $gin_file != /* ]] || die "--gin_file '$gin_file' must be relative to the repository root"
    [[ -f $repo/$gin_file ]] || die "gin file '$gin_file' not found in $repo"
  done
  if [[ -n $git_ref && -z $git_url ]]; then
    git_url=$(git -C "$repo" remote get-url origin 2>/dev/null) ||
      die "--git_ref needs --git_url: $repo has no 'origin' remote"
  fi
  if [[ -z $project ]]; then
    project=$(gcloud config get-value project 2>/dev/null) || project=""
    [[ -n $project && $project != "(unset)" ]] ||
      die "missing --project, and \`gcloud config get-value project\` gives none"
  fi
  location_flags=("--project=$project" "--zone=$zone")
}

# Compiles the run for the slice on this machine (libtpu's compile-only devices), from the checkout
# the workers get; stops before anything is created unless it fits (hybridir.cloud.aot exits 0).
check_fits() {
  local args=(-m hybridir.aot "--accelerator_type=$accelerator_type") gin_file binding status=0
  for gin_file in "${gin_files[@]}"; do
    args+=("--gin_file=$gin_file")
  done
  args+=("--gin.MODEL_DIR=\"$model_dir\"")
  for binding in ${gin_bindings[@]+"${gin_bindings[@]}"}; do
    args+=("--gin.$binding")
  done
  (cd "$repo" && run "${PYTHON:-python3}" "${args[@]}") || status=$?
  case $status in
    0) ((dry_run)) || note "the run fits $accelerator_type" ;;
    3) die "the run does not fit $accelerator_type (report above); no TPU created. Find the" \
      "batch that fits with python -m hybridir.aot --max_batch" ;;
    *) die "the compile check failed (exit status $status); no TPU created" ;;
  esac
}

create_tpu() {
  local flags=("--accelerator-type=$accelerator_type")
  if ((queued)); then
    flags+=("--runtime-version=$runtime_version")
  else
    flags+=("--version=$runtime_version")
  fi
  if ((spot)); then
    flags+=(--spot)
  fi
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${location_flags[@]}" \
      "${flags[@]}"
  else
    run gcloud compute tpus tpu-vm create "$name" "${location_flags[@]}" "${flags[@]}"
  fi
}

delete_tpu() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${location_flags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${location_flags[@]}" --quiet
  fi
}

wait_for_queued_resource() {
  while true; do
    query gcloud compute tpus queued-resources describe "$name" "${location_flags[@]}" \
      --format='value(state.state)'
    if ((dry_run)) || [[ $query_output == ACTIVE ]]; then
      return 0
    fi
    case $query_output in
      FAILED | SUSPENDED) die "queued resource $name is $query_output; rerun to recreate it" ;;
    esac
    note "queued resource $name is ${query_output:-not visible yet}; asking again in" \
      "${QUEUED_POLL_SECONDS}s"
    sleep "$QUEUED_POLL_SECONDS"
  done
}

# Creates the TPU unless a usable one of that name exists; recreates a preempted one.
ensure_tpu() {
  if ((reuse)); then
    return 0
  fi
  if ((queued)); then
    query gcloud compute tpus queued-resources describe "$name" "${location_flags[@]}" \
      --format='value(state.state)'
    case $query_output in
      "") create_tpu ;;
      FAILED | SUSPENDED)
        note "queued resource $name is $query_output; recreating it"
        delete_tpu
        create_tpu
        ;;
      *) note "queued resource $name exists ($query_output); using it" ;;
    esac
    wait_for_queued_resource
  else
    query gcloud compute tpus tpu-vm describe "$name" "${location_flags[@]}" --format='value(state)'
    case $query_output in
      "") create_tpu ;;
      PREEMPTED | TERMINATED)
        note "TPU $name is $query_output; recreating it"
        delete_tpu
        create_tpu
        ;;
      READY) note "TPU $name exists and is READY; using it" ;;
      *) die "TPU $name is $query_output; rerun when it is READY, or delete it" ;;
    esac
  fi
}

on_workers() {  # on_workers COMMAND: runs the shell command on every worker, output streamed here.
  run gcloud compute tpus tpu-vm ssh "$name" "${location_flags[@]}" --worker=all --command="$1"
}

join_by() {  # join_by SEPARATOR ITEM...: prints the items joined by SEPARATOR.
  local separator=$1 joined=$2
  shift 2
  while (($#)); do
    joined+="$separator$1"
    shift
  done
  printf '%s' "$joined"
}

# The shell command, run in each worker's home, that puts the code in hybridir/src and installs it
# into hybridir/venv. jax needs Python >= 3.11: the image's python3 if new enough, else apt's python3.11.
setup_command() {
  local fetch
  if [[ -n $git_ref ]]; then
    fetch=$(join_by "; " "git clone --quiet $(quote "$git_url") $REMOTE_DIR/src" \
      "git -C $REMOTE_DIR/src checkout --quiet $(quote "$git_ref")")
  else
    fetch=$(join_by "; " "mkdir -p $REMOTE_DIR/src" "tar -xzf $REMOTE_TARBALL -C $REMOTE_DIR/src" \
      "rm $REMOTE_TARBALL")
  fi
  local make_venv
  make_venv="if [ ! -x $REMOTE_DIR/venv/bin/python ]; then $(join_by "; " \
    "python=python3" \
    "python3 -c \"import sys; sys.exit(sys.version_info < (3, 11))\" || python=python3.11" \
    "sudo apt-get -qq -o DPkg::Lock::Timeout=600 update" \
    "sudo apt-get -qq -o DPkg::Lock::Timeout=600 install -y \"\$python\" \"\$python-venv\"" \
    "\"\$python\" -m venv $REMOTE_DIR/venv"); fi"
  join_by "; " "set -e" "rm -rf $REMOTE_DIR/src" "$fetch" "$make_venv" "cd $REMOTE_DIR/src" \
    "../venv/bin/pip install --quiet --upgrade pip" "../venv/bin/pip install --quiet -e . 'jax[tpu]'"
}

# The shell command, run in each worker's home, that runs the job, tees its output to
# hybridir/logs/ and then copies that log to MODEL_DIR/logs/. It exits with the job's status.
run_command() {
  local job gin_file binding
  job=$(basename "${gin_files[0]}" .gin)
  local python_args="-u -m hybridir.main"
  for gin_file in "${gin_files[@]}"; do
    python_args+=" $(quote "--gin_file=$gin_file")"
  done
  python_args+=" $(quote "--gin.MODEL_DIR=\"$model_dir\"")"
  for binding in ${gin_bindings[@]+"${gin_bindings[@]}"}; do
    python_args+=" $(quote "--gin.$binding")"
  done
  local logs_url
  logs_url=$(quote "$model_dir/logs/")
  join_by "; " "set -o pipefail" "mkdir -p $REMOTE_DIR/logs" \
    "log=\$PWD/$REMOTE_DIR/logs/$job-\$(date -u +%Y%m%dT%H%M%SZ)-\$(hostname).log" \
    "(cd $REMOTE_DIR/src && ../venv/bin/python $python_args) 2>&1 | tee \"\$log\"" \
    "status=\$?" \
    "gcloud storage cp \"\$log\" $logs_url || echo \"could not copy \$log to the model dir\" >&2" \
    "exit \$status"
}

copy_code() {
  if [[ -n $git_ref ]]; then
    return 0
  fi
  tarball="${TMPDIR:-/tmp}/hybridir-$name.tar.gz"
  if ((!dry_run)); then
    trap 'rm -f "$tarball"' EXIT
  fi
  run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./out --exclude=./runs \
    --exclude=./.pytest_cache --exclude=__pycache__ --exclude='*.egg-info' -C "$repo" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:$REMOTE_TARBALL" "${location_flags[@]}" --worker=all
}

main() {
  parse_args "$@"
  validate
  if ((check)); then
    check_fits
  fi
  ensure_tpu
  copy_code
  on_workers "$(setup_command)"
  local status=0
  on_workers "$(run_command)" || status=$?
  if ((status)); then
    note "the job failed on at least one worker (exit status $status)"
  fi
  if [[ -n $results_dir ]]; then
    run mkdir -p "$results_dir"
    run gcloud storage cp -r "$model_dir" "$results_dir"
  fi
  if ((delete)); then
    delete_tpu
  fi
  note "checkpoints and metrics: $model_dir;" \
    "logs: $model_dir/logs/ (and ~/$REMOTE_DIR/logs on each worker)"
  return "$status"
}

main "$@"
