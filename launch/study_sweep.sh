#!/usr/bin/env bash
# The full-scale study on Cloud TPU: for every model x strategy x seed, train (launch/tpu.sh),
# export the encoder and evaluate it on LAReQA (in-domain XQuAD-R held-out articles, out-of-domain
# MLQA-R) into gs://BUCKET/study/{model}_{strategy}_seed{seed}/eval. Then gather one report:
#   python -m hybridir.study_gather --runs_root gs://BUCKET/study --output_dir out/study_full
#
# usage: launch/study_sweep.sh --bucket gs://BUCKET/study --corpus_dir gs://BUCKET/corpus \
#          --zone ZONE --accelerator_type v4-32 [--models "mt5_base xlmr_base"] [--seeds "0 1 2"]
#          [--strategies "monolingual cross-lingual hybrid"] [--data_dir DIR] [--dry-run]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
models="mt5_base mt5_large mt5_xl xlmr_base xlmr_large"
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

for model in $models; do
  family=t5
  spm="gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
  if [[ "$model" == xlmr_* ]]; then
    family=xlmr  # As in gin_configs/runs/study/xlmr_*.gin: the HF checkpoint on every worker.
    spm="/home/user/checkpoints/xlm-roberta-${model#xlmr_}/sentencepiece.bpe.model"
  fi
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
        --gin "SPM_PATH='/tmp/$run/export/sentencepiece.model'"
    done
  done
done
