#!/usr/bin/env bash
# Reproduce the bundled model ssa_tiny.synthref, its two ablations and the results table.
#
#   bash scripts/train_synthref.sh                 # on the CPU: the shipped model (timings: docs/synthref.md)
#   bash scripts/train_synthref.sh --device cuda   # on one GPU: 192x192 frames, bf16, the deeper ssa_tiny
#
# Run from the repository root after `pip install -e .`. Interrupted, the same command goes on where it
# stopped: finished data and CLIP are kept, every training run resumes from its newest checkpoint.
# STEPS=train skips making the data and the CLIP; STEPS=table only makes the table. The GPU run writes
# under runs/gpu and datasets/*_192 and leaves the shipped file alone unless EXPORT names it.
# For a quick check of the whole pipeline, VIDEOS, VALID_VIDEOS, HELDOUT_VIDEOS, CLIP_STEPS and
# TRAIN_ARGS (extra `ssa-rvos train` overrides for every run) scale it down.
set -euo pipefail

DEVICE=cpu
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=${2:-}; shift 2 || { echo "train_synthref.sh: --device needs a value (cpu or cuda)" >&2; exit 2; } ;;
    --device=*) DEVICE=${1#--device=}; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "train_synthref.sh: unknown argument '$1' (expected --device cpu|cuda)" >&2; exit 2 ;;
  esac
done

STEPS=${STEPS:-all}
VIDEOS=${VIDEOS:-3000}
VALID_VIDEOS=${VALID_VIDEOS:-300}
HELDOUT_VIDEOS=${HELDOUT_VIDEOS:-100}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
case $DEVICE in
  cpu)
    SIZE=96
    DATA=${DATA:-datasets/synthref}                # training data (seed 0)
    HELDOUT=${HELDOUT:-datasets/synthref_heldout}  # the held-out benchmark (seed 1, never trained on)
    RUNS=${RUNS:-runs}
    EXPORT=${EXPORT:-src/ssa_rvos/weights/ssa_tiny_synthref.safetensors}
    CLIP_ARGS=(--steps "${CLIP_STEPS:-1500}" --batch-size 128 --lr 1e-3 --image-size 96 --threads 2)
    RECIPE=synthref_text                           # the CPU preset ssa_tiny_shallow, 4,000 steps, text tower trained
    ;;
  cuda)
    SIZE=192
    DATA=${DATA:-datasets/synthref_192}
    HELDOUT=${HELDOUT:-datasets/synthref_heldout_192}
    RUNS=${RUNS:-runs/gpu}
    EXPORT=${EXPORT:-runs/gpu/ssa_tiny_synthref_192.safetensors}
    CLIP_ARGS=(--steps "${CLIP_STEPS:-3000}" --batch-size 256 --lr 1e-3 --image-size 192 --device cuda)
    RECIPE=synthref_gpu                            # ssa_tiny (every layer count of the paper), 8,000 steps
    ;;
  *) echo "train_synthref.sh: --device must be cpu or cuda, got '$DEVICE'" >&2; exit 2 ;;
esac
if [[ $DEVICE == cuda ]] && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "train_synthref.sh: --device cuda: torch sees no CUDA GPU here (use --device cpu)" >&2; exit 2
fi
CLIP=$RUNS/synthref_clip/ssa_tiny_clip.safetensors
declare -A SWITCHES=([synthref]="" [synthref_no_adapters]="model.use_adapters=false"
                     [synthref_no_alignment]="model.sequential_alignment=false")
RUN_NAMES=(synthref synthref_no_adapters synthref_no_alignment)

last_checkpoint() {  # the newest checkpoint folder of a run
  echo "$RUNS/$1/checkpoints/$(cat "$RUNS/$1/checkpoints/latest")"
}

train_model() {  # one model; --resume: from its newest checkpoint if it has one, else from the start
  # shellcheck disable=SC2086  # the switch is one word or none
  ssa-rvos train "$RECIPE" data.datasets.0.root="$DATA" model.clip_weights="$CLIP" ${SWITCHES[$1]} \
    output_dir="$RUNS/$1" "${TRAIN_ARGS[@]}" --resume >> "$RUNS/$1.log" 2>&1
}

if [[ $STEPS == all ]]; then
  # 1. SynthRef: the training videos (also the CLIP's captions), more for the CLIP's held-out retrieval;
  #    the held-out benchmark: the first 100 videos of a split made with another seed.
  [[ -f $DATA/train/synthref.json && -f $DATA/valid_u/synthref.json ]] || ssa-rvos synth --out "$DATA" --videos "$VIDEOS" --valid-videos "$VALID_VIDEOS" \
    --frames 12 --size $SIZE --seed 0 --splits train,valid_u --quiet
  [[ -f $HELDOUT/valid_u/synthref.json ]] || ssa-rvos synth --out "$HELDOUT" --videos "$HELDOUT_VIDEOS" \
    --valid-videos "$HELDOUT_VIDEOS" --frames 12 --size $SIZE --seed 1 --splits valid_u --quiet
  # 2. The tiny CLIP, contrastive on the frames and captions; frozen from here on.
  [[ -f $CLIP ]] || ssa-rvos pretrain-clip --root "$DATA" "${CLIP_ARGS[@]}" --eval-every 500 -o "$CLIP" --quiet
fi
if [[ $STEPS == all || $STEPS == train ]]; then
  # 3. The tiny SSA and its two ablations with the same recipes and budget (frozen CLIP features only; no
  #    sequential alignment). On the CPU side by side, one thread each; on a GPU one after the other.
  mkdir -p "$RUNS"
  if [[ $DEVICE == cpu ]]; then
    pids=()
    for run in "${RUN_NAMES[@]}"; do
      (export OMP_NUM_THREADS=1; train_model "$run") &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done  # fails if any run failed
  else
    for run in "${RUN_NAMES[@]}"; do train_model "$run"; done
  fi
  # 4. The shipped file: the full model in float16.
  python scripts/export_model.py "$(last_checkpoint synthref)" "$EXPORT" \
    --fp16 --note "SSA trained on SynthRef with recipe $RECIPE (scripts/train_synthref.sh --device $DEVICE)"
fi
# 5. The table: J, F, J&F overall and per expression kind on the held-out videos, with bootstrap intervals.
python scripts/synthref_table.py --data "$HELDOUT" --output "$RUNS/synthref_table" \
  --model "SSA=$(last_checkpoint synthref)" \
  --model "w/o adapters=$(last_checkpoint synthref_no_adapters)" \
  --model "w/o sequential alignment=$(last_checkpoint synthref_no_alignment)"
