#!/usr/bin/env bash
# Reproduce the bundled model ssa_tiny.synthref, its two ablations and the results table on a CPU.
# Run from the repository root after `pip install -e .`; timings on a 2-core machine are in
# docs/synthref.md. STEPS=train skips making the data and the CLIP; STEPS=table only makes the table.
set -euo pipefail

DATA=${DATA:-datasets/synthref}                # training data (seed 0)
HELDOUT=${HELDOUT:-datasets/synthref_heldout}  # the held-out benchmark (seed 1, never trained on)
CLIP=runs/synthref_clip/ssa_tiny_clip.safetensors
STEPS=${STEPS:-all}
CKPT=checkpoints/step_0001500                  # each stage's last step (optim.max_steps)

if [[ $STEPS == all ]]; then
  # 1. SynthRef: 3000 training videos (also the CLIP's captions), 300 for the CLIP's held-out retrieval;
  #    the held-out benchmark: the first 100 videos of a split made with another seed.
  ssa-rvos synth --out "$DATA" --videos 3000 --valid-videos 300 --frames 12 --size 96 --seed 0 --splits train,valid_u
  ssa-rvos synth --out "$HELDOUT" --videos 100 --valid-videos 100 --frames 12 --size 96 --seed 1 --splits valid_u
  # 2. The tiny CLIP, contrastive on the frames and captions; frozen from here on.
  ssa-rvos pretrain-clip --root "$DATA" --steps 1500 --batch-size 128 --lr 1e-3 --image-size 96 --threads 2 \
    --eval-every 500 -o "$CLIP"
fi
if [[ $STEPS == all || $STEPS == train ]]; then
  # 3. The tiny SSA and its two ablations with the same recipes and budget (frozen CLIP features only; no
  #    sequential alignment), side by side, one thread each. Two stages of 1,500 steps: the recipe
  #    src/ssa_rvos/training/recipes/synthref.yaml, then synthref_stage2.yaml from its last weights.
  mkdir -p runs
  common=(data.datasets.0.root="$DATA" model.clip_weights="$CLIP")
  pids=()
  declare -A switches=([synthref]="" [synthref_no_adapters]="model.use_adapters=false"
                       [synthref_no_alignment]="model.sequential_alignment=false")
  for run in "${!switches[@]}"; do
    # shellcheck disable=SC2086  # the switch is one word or none
    (OMP_NUM_THREADS=1 ssa-rvos train synthref "${common[@]}" ${switches[$run]} output_dir="runs/$run" \
       > "runs/$run.log" 2>&1 &&
     OMP_NUM_THREADS=1 ssa-rvos train synthref_stage2 "${common[@]}" ${switches[$run]} \
       model.init_from="runs/$run/$CKPT/model.safetensors" output_dir="runs/${run}_stage2" \
       > "runs/${run}_stage2.log" 2>&1) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done  # fails if any run failed
  # 4. The shipped file: the full model in float16.
  python scripts/export_model.py runs/synthref_stage2/$CKPT src/ssa_rvos/weights/ssa_tiny_synthref.safetensors \
    --fp16 --note "ssa_tiny trained on SynthRef with recipes synthref + synthref_stage2 (scripts/train_synthref.sh)"
fi
# 5. The table: J, F, J&F overall and per expression kind on the held-out videos.
python scripts/synthref_table.py --data "$HELDOUT" --output runs/synthref_table \
  --model "SSA=runs/synthref_stage2/$CKPT" \
  --model "w/o adapters=runs/synthref_no_adapters_stage2/$CKPT" \
  --model "w/o sequential alignment=runs/synthref_no_alignment_stage2/$CKPT"
