#!/usr/bin/env bash
# The full-scale study on Cloud TPU: for every model x strategy x seed, train (launch/tpu.sh),
# export the encoder and evaluate it on LAReQA (in-domain XQuAD-R held-out articles, out-of-domain
# MLQA-R) into gs://BUCKET/study/{model}_{strategy}_seed{seed}/eval. Then gather one report:
#   python -m hybridir.study_gather --runs_root gs://BUCKET/study --output_dir out/study_full
#
# usage: launch/study_sweep.sh --bucket gs://BUCKET/study --corpus_dir gs://BUCKET/corpus \
#          --zone ZONE --accelerator_type v4-32 [--models "mt5_base labse"] [--seeds "0 1 2"]
#          [--strategies "monolingual cross-lingual hybrid"] [--data_dir DIR] [--dry-run]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
models="mt5_base mt5_large mt5_xl xlmr_base xlmr_large labse"
strategies="monolingual cross-lingual hybrid"
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
    monolingual) echo 1.0 ;;
    cross-lingual) echo 0.0 ;;
    hybrid) echo 0.5 ;;
    *) echo "study_sweep.sh: unknown strategy $1" >&2; exit 2 ;;
  esac
}

# A binding `NAME = 'value'` of a study run file.
gin_value() {
  local value
  value="$(sed -n "s/^$2 = '\(.*\)'.*/\1/p" "$here/../gin_configs/runs/study/$1.gin")"
  if [[ -z "$value" ]]; then
    echo "study_sweep.sh: gin_configs/runs/study/$1.gin binds no $2" >&2
    exit 2
  fi
  echo "$value"
}

for model in $models; do
  # The run file names the family and its vocabulary (for export and the eval features).
  family="$(gin_value "$model" FAMILY)"
  spm="$(gin_value "$model" SPM_PATH)"
  for strategy in $strategies; do
    alpha="$(alpha_of "$strategy")"
    for seed in $seeds; do
      run="${model}_${strategy}_seed${seed}"
      name="hybridir-${run//_/-}"
      name="${name,,}"
      common=(--name "$name" --zone "$zone" --model_dir "$bucket/$run" "${extra[@]}")
      "$here/tpu.sh" "${common[@]}" --accelerator_type "$accelerator_type" --spot \
        --gin_file "gin_configs/runs/study/$model.gin" \
        --gin "CORPUS_DIR='$corpus_dir'" --gin "ALPHA=$alpha" --gin "SEED=$seed"
      "$here/tpu.sh" "${common[@]}" --reuse \
        --gin_file gin_configs/runs/export.gin --gin_file "gin_configs/models/$model.gin" \
        --gin "EXPORT_DIR='/tmp/$run/export'" --gin "SPM_PATH='$spm'"
      "$here/tpu.sh" "${common[@]}" --reuse --delete --gin_file gin_configs/runs/eval.gin \
        --gin "ENCODER_PATH='/tmp/$run/export'" --gin "EVAL_DIR='$bucket/$run/eval'" \
        --gin "FAMILY='$family'" --gin "DATA_DIR='$data_dir'" \
        --gin "SPM_PATH='$spm'"
    done
  done
done
