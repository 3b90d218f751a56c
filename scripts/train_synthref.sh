#!/usr/bin/env bash
# Reproduce the bundled model ssa_tiny.synthref, its two ablations and the results table.
#
#   bash scripts/train_synthref.sh                 # on the CPU: the shipped model (timings: docs/synthref.md)
#   bash scripts/train_synthref.sh --device cuda   # on one GPU: 192x192 frames, bf16, the deeper ssa_tiny
#   RECIPE=synthref_text CYCLES=0 bash scripts/train_synthref.sh   # the model shipped before: 4,000 steps
#
# Run from the repository root after `pip install -e .`. Interrupted, the same command goes on where it
# stopped: finished data and CLIP are kept, every training run resumes from its newest checkpoint.
# STEPS=train skips making the data and the CLIP; STEPS=table only makes the table; ABLATIONS=0 trains
# and tables SSA alone. RECIPE (on the CPU) trains another recipe, and CYCLES learning-rate cycles of
# 2,000 steps each after it (2 by default), each from the weights of the one before (docs/synthref.md,
# "More steps"). The GPU run writes under runs/gpu and datasets/*_192 and leaves the shipped file alone unless
# EXPORT names it. For a quick check of the whole pipeline, VIDEOS, VALID_VIDEOS, HELDOUT_VIDEOS,
# CLIP_STEPS and TRAIN_ARGS (extra `ssa-rvos train` overrides for every run and cycle) scale it down.
set -euo pipefail

DEVICE=cpu
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=${2:-}; shift 2 || { echo "train_synthref.sh: --device needs a value (cpu or cuda)" >&2; exit 2; } ;;
    --device=*) DEVICE=${1#--device=}; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "train_synthref.sh: unknown argument '$1' (expected --device cpu|cuda)" >&2; exit 2 ;;
  esac
done

STEPS=${STEPS:-all}
VIDEOS=${VIDEOS:-3000}
VALID_VIDEOS=${VALID_VIDEOS:-300}
HELDOUT_VIDEOS=${HELDOUT_VIDEOS:-100}
ABLATIONS=${ABLATIONS:-1}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
case $DEVICE in
  cpu)
    SIZE=96
    DATA=${DATA:-datasets/synthref}                # training data (seed 0)
    HELDOUT=${HELDOUT:-datasets/synthref_heldout}  # the held-out benchmark (seed 1, never trained on)
    RUNS=${RUNS:-runs}
    EXPORT=${EXPORT:-src/ssa_rvos/weights/ssa_tiny_synthref.safetensors}
    CLIP_ARGS=(--steps "${CLIP_STEPS:-1500}" --batch-size 128 --lr 1e-3 --image-size 96 --threads 2)
    RECIPE=${RECIPE:-synthref_motionaux}           # ssa_tiny_shallow, 4,000 steps, text tower, displacement loss
    CYCLES=${CYCLES:-2}                            # then two learning-rate cycles of 2,000 steps: 8,000 in all
    CYCLE_ARGS=(optim.max_steps=2000 "optim.lr_steps=[1700]")
    ;;
  cuda)
    SIZE=192
    DATA=${DATA:-datasets/synthref_192}
    HELDOUT=${HELDOUT:-datasets/synthref_heldout_192}
    RUNS=${RUNS:-runs/gpu}
    EXPORT=${EXPORT:-runs/gpu/ssa_tiny_synthref_192.safetensors}
    CLIP_ARGS=(--steps "${CLIP_STEPS:-3000}" --batch-size 256 --lr 1e-3 --image-size 192 --device cuda)
    [[ -z ${RECIPE:-} && -z ${CYCLES:-} ]] || { echo "train_synthref.sh: RECIPE and CYCLES are for --device cpu" >&2; exit 2; }
    RECIPE=synthref_gpu                            # ssa_tiny (every layer count of the paper), 8,000 steps
    CYCLES=0
    CYCLE_ARGS=()
    ;;
  *) echo "train_synthref.sh: --device must be cpu or cuda, got '$DEVICE'" >&2; exit 2 ;;
esac
[[ $CYCLES =~ ^[0-9]+$ ]] || { echo "train_synthref.sh: CYCLES must be a whole number, got '$CYCLES'" >&2; exit 2; }
if [[ $DEVICE == cuda ]] && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "train_synthref.sh: --device cuda: torch sees no CUDA GPU here (use --device cpu)" >&2; exit 2
fi
CLIP=$RUNS/synthref_clip/ssa_tiny_clip.safetensors
declare -A SWITCHES=([synthref]="" [synthref_no_adapters]="model.use_adapters=false"
                     [synthref_no_alignment]="model.sequential_alignment=false")
RUN_NAMES=(synthref synthref_no_adapters synthref_no_alignment)
[[ $ABLATIONS == 0 ]] && RUN_NAMES=(synthref)

last_stage() {  # the output folder of a run's last cycle: runs/NAME, then runs/NAME_cycle2, ...
  if (( CYCLES > 0 )); then echo "$RUNS/$1_cycle$((CYCLES + 1))"; else echo "$RUNS/$1"; fi
}

last_checkpoint() {  # the newest checkpoint folder of a run (of its last cycle)
  local dir
  dir=$(last_stage "$1")
  echo "$dir/checkpoints/$(cat "$dir/checkpoints/latest")"
}

train_model() {  # one model, cycle after cycle; --resume: each from its newest checkpoint if it has one
  local out previous stage
  local -a stage_args
  for ((stage = 1; stage <= CYCLES + 1; stage++)); do
    if ((stage == 1)); then
      out=$RUNS/$1
      stage_args=()
    else
      # A cycle: the weights of the stage before (the trained text tower included), a fresh optimizer and
      # learning-rate schedule (CYCLE_ARGS: 2,000 steps, x0.1 at 1,700), the data drawn with another seed.
      previous=$out/checkpoints/$(cat "$out/checkpoints/latest")
      out=$RUNS/$1_cycle$stage
      stage_args=("${CYCLE_ARGS[@]}" model.init_from="$previous/model.safetensors" seed=$stage)
    fi
    # shellcheck disable=SC2086  # the switch is one word or none
    ssa-rvos train "$RECIPE" data.datasets.0.root="$DATA" model.clip_weights="$CLIP" ${SWITCHES[$1]} \
      "${stage_args[@]}" output_dir="$out" "${TRAIN_ARGS[@]}" --resume >> "$RUNS/$1.log" 2>&1
  done
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
  # 3. The tiny SSA and its two ablations with the same recipe and budget (frozen CLIP features only; no
  #    sequential alignment). On the CPU SSA first, alone at 2 threads, then the ablations side by side,
  #    one thread each; on a GPU one after the other.
  mkdir -p "$RUNS"
  if [[ $DEVICE == cpu ]]; then
    (export OMP_NUM_THREADS=2; train_model synthref)
  else
    train_model synthref
  fi
  # 4. The shipped file: the full model in float16.
  python scripts/export_model.py "$(last_checkpoint synthref)" "$EXPORT" \
    --fp16 --note "SSA trained on SynthRef with recipe $RECIPE and $CYCLES more cycles (scripts/train_synthref.sh --device $DEVICE)"
  if [[ $DEVICE == cpu ]]; then
    pids=()
    for run in "${RUN_NAMES[@]:1}"; do
      (export OMP_NUM_THREADS=1; train_model "$run") &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done  # fails if any run failed
  else
    for run in "${RUN_NAMES[@]:1}"; do train_model "$run"; done
  fi
fi
# 5. The table: J, F, J&F overall and per expression kind on the held-out videos, with bootstrap intervals.
declare -A LABELS=([synthref]="SSA" [synthref_no_adapters]="w/o adapters"
                   [synthref_no_alignment]="w/o sequential alignment")
models=()
for run in "${RUN_NAMES[@]}"; do models+=(--model "${LABELS[$run]}=$(last_checkpoint "$run")"); done
python scripts/synthref_table.py --data "$HELDOUT" --output "$RUNS/synthref_table" "${models[@]}"
