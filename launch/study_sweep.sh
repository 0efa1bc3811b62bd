#!/usr/bin/env bash
# The full-scale study on Cloud TPU: for every model x strategy x seed, one job (launch/tpu.sh) runs
# the study's run (gin_configs/runs/study/base.gin, the same run the CPU demo sweeps): train,
# keep the checkpoint with the lowest validation loss, export it and evaluate it on the in-domain
# test articles, MLQA-R (and MIRACL when given), into
# gs://BUCKET/study/{model}_{strategy}_seed{seed}/study_results.json. Then gather one report:
#   python -m hybridir.study_gather --runs_root gs://BUCKET/study --output_dir out/study_full
#
# usage: launch/study_sweep.sh --bucket gs://BUCKET/study --corpus_dir gs://BUCKET/corpus \
#          --zone ZONE --accelerator_type v4-8 [--models "mt5_base labse"] [--seeds "0 1 2"]
#          [--strategies "mono cross hybrid"] [--data_dir DIR] [--dry-run]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
models="mt5_base mt5_large mt5_xl xlmr_base xlmr_large labse"
strategies="mono cross hybrid"
seeds="0 1 2"
bucket="" corpus_dir="" zone="" accelerator_type="" data_dir="data" extra=()

while (($#)); do
  case "$1" in
    --bucket) bucket="$2"; shift 2 ;;
    --corpus_dir) corpus_dir="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator_type) accelerator_type="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --strategies) strategies="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --data_dir) data_dir="$2"; shift 2 ;;
    --dry-run) extra+=(--dry-run); shift ;;
    *) echo "study_sweep.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for required in bucket corpus_dir zone accelerator_type; do
  if [[ -z "${!required}" ]]; then
    echo "study_sweep.sh: --${required} is required" >&2
    exit 2
  fi
done

alpha_of() {
  case "$1" in
    mono) echo 1.0 ;;
    cross) echo 0.0 ;;
    hybrid) echo 0.5 ;;
    *) echo "study_sweep.sh: unknown strategy $1" >&2; exit 2 ;;
  esac
}

for model in $models; do
  for strategy in $strategies; do
    alpha="$(alpha_of "$strategy")"
    for seed in $seeds; do
      run="${model}_${strategy}_seed${seed}"
      name="hybridir-${run//_/-}"
      name="${name,,}"
      "$here/tpu.sh" --name "$name" --zone "$zone" --model_dir "$bucket/$run" "${extra[@]}" \
        --accelerator_type "$accelerator_type" --spot --delete \
        --gin_file "gin_configs/runs/study/$model.gin" \
        --gin "CORPUS_DIR='$corpus_dir'" --gin "DATA_DIR='$data_dir'" \
        --gin "ALPHA=$alpha" --gin "SEED=$seed"
    done
  done
done
