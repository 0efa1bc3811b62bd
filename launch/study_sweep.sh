#!/usr/bin/env bash
# The full-scale study on Cloud TPU: for every model x strategy x seed, one job (launch/tpu.sh) runs
# the study's run (gin_configs/runs/study/base.gin, the same run the CPU demo sweeps): train,
# keep the checkpoint with the lowest English validation loss, export it and evaluate it on the
# corpus's held-out test articles (in-domain) and on XQuAD-R and MLQA-R whole (out of domain), into
# gs://BUCKET/study/{model}_{strategy}_seed{seed}/study_results.json.
# With --miracl_dir (the public MIRACL files: README, "MIRACL in the study"), the run keeps its
# export at <run>/export and a second job on the same slice evaluates it on every MIRACL language
# (gin_configs/runs/study/miracl.gin) into <run>/miracl/<lang>/results.json, skipping languages
# already done; --dry-run then first prints that stage's plan (python -m hybridir.miracl_plan,
# with $PYTHON, default python3): per language the files and passages each host reads, per model
# the index size and projected encoding time. Then gather one report:
#   python -m hybridir.study_gather --runs_root gs://BUCKET/study --output_dir out/study_full
#
# usage: launch/study_sweep.sh --bucket gs://BUCKET/study --corpus_dir gs://BUCKET/corpus \
#          --zone ZONE --accelerator_type v4-8 [--models "mt5_base labse"] [--seeds "0 1 2"]
#          [--strategies "mono cross hybrid"] [--data_dir DIR]
#          [--miracl_dir gs://BUCKET/miracl [--miracl_languages "sw te"]] [--dry-run]
# Each job deletes its slice when it ends, except a training job that a MIRACL job follows: that
# one leaves the slice to it. A failed job stops the sweep (rerun it to resume); a failed training
# job leaves its slice up, as the message then says.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
models="mt5_base mt5_large mt5_xl xlmr_base xlmr_large labse"
strategies="mono cross hybrid"
seeds="0 1 2"
bucket="" corpus_dir="" zone="" accelerator_type="" data_dir="data" extra=() dry_run=0
miracl_dir="" miracl_languages=""

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
    --miracl_dir) miracl_dir="${2%/}"; shift 2 ;;
    --miracl_languages) miracl_languages="$2"; shift 2 ;;
    --dry-run) extra+=(--dry-run); dry_run=1; shift ;;
    *) echo "study_sweep.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for required in bucket corpus_dir zone accelerator_type; do
  if [[ -z "${!required}" ]]; then
    echo "study_sweep.sh: --${required} is required" >&2
    exit 2
  fi
done

# MIRACL's languages as a gin list (empty: miracl.gin's default, the study's 16).
miracl_bindings=()
if [[ -n "$miracl_languages" ]]; then
  list=""
  for language in $miracl_languages; do
    list+="${list:+, }'$language'"
  done
  miracl_bindings+=(--gin "MIRACL_LANGUAGES=[$list]")
fi

if ((dry_run)) && [[ -n "$miracl_dir" ]]; then
  plan=(-m hybridir.miracl_plan --miracl_dir "$miracl_dir" --accelerator_type "$accelerator_type"
        --models "$models")
  if [[ -n "$miracl_languages" ]]; then
    plan+=(--languages "$miracl_languages")
  fi
  (cd "$here/.." && "${PYTHON:-python3}" "${plan[@]}") ||
    echo "study_sweep.sh: no MIRACL plan (python ${plan[*]} failed); the jobs follow" >&2
fi

for model in $models; do
  for strategy in $strategies; do
    for seed in $seeds; do
      # The run's folder name and ALPHA, as the demo and the gather name runs (standard library
      # only: no hybridir install needed here).
      layout="$(python3 "$here/../hybridir/study/study_layout.py" --model "$model" \
        --strategy "$strategy" --seed "$seed")"
      read -r run alpha <<<"$layout"
      name="hybridir-${run//_/-}"
      name="${name,,}"
      slice=(--name "$name" --zone "$zone" --accelerator_type "$accelerator_type" --spot)
      train=(--gin_file "gin_configs/runs/study/$model.gin"
             --gin "CORPUS_DIR='$corpus_dir'" --gin "DATA_DIR='$data_dir'"
             --gin "ALPHA=$alpha" --gin "SEED=$seed")
      if [[ -z "$miracl_dir" ]]; then
        "$here/tpu.sh" "${slice[@]}" --delete --model_dir "$bucket/$run" "${extra[@]}" "${train[@]}"
        continue
      fi
      status=0
      "$here/tpu.sh" "${slice[@]}" --model_dir "$bucket/$run" "${extra[@]}" "${train[@]}" \
        --gin "EXPORT_DIR='$bucket/$run/export'" || status=$?
      if ((status)); then
        echo "study_sweep.sh: training $run failed (status $status); its slice $name is left up" \
          "for the MIRACL job: rerun the sweep to resume on it, or delete it:" \
          "gcloud compute tpus tpu-vm delete $name --zone $zone" >&2
        exit "$status"
      fi
      # Without --reuse: the slice the training left is used when READY, recreated if preempted.
      "$here/tpu.sh" "${slice[@]}" --delete --model_dir "$bucket/$run/miracl" "${extra[@]}" \
        --gin_file gin_configs/runs/study/miracl.gin \
        --gin "ENCODER_PATH='$bucket/$run/export'" --gin "MIRACL_DIR='$miracl_dir'" \
        "${miracl_bindings[@]}"
    done
  done
done
