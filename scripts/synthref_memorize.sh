#!/usr/bin/env bash
# Issue 18's first diagnosis: can the tiny SSA learn at all? Train the synthref recipe on 20 training videos
# only (the first 20 of the seed-0 training split) and score it on those same videos: a model whose losses,
# matching, targets and text path work must memorise them (goal: J&F > 90). The frozen CLIP is the one inside
# the bundled model (the CLIP the shipped SSA was trained on). One thread, so it can run beside other work.
# Scores every saved checkpoint (each 250 steps) with scripts/synthref_table.py and the sentence test of
# scripts/synthref_diagnose.py --sensitivity. Run from the repository root after `pip install -e .`.
set -euo pipefail

DATA=${DATA:-datasets/mem20}
RUN=${RUN:-runs/mem20}
CLIP=runs/bundled_clip.safetensors
STEPS=${STEPS:-1500}

ssa-rvos synth --out "$DATA" --videos 20 --valid-videos 20 --frames 12 --size 96 --seed 0 --splits train --quiet
mkdir -p runs
python - "$CLIP" <<'PY'
import sys
from safetensors.torch import save_file
from ssa_rvos.pretrained import load_pretrained
clip = load_pretrained(None).backbone.clip  # the bundled model's frozen CLIP
save_file({k: v.float().contiguous() for k, v in clip.state_dict().items()}, sys.argv[1])
PY
OMP_NUM_THREADS=1 ssa-rvos train synthref data.datasets.0.root="$DATA" model.clip_weights="$CLIP" \
  optim.max_steps="$STEPS" "optim.lr_steps=[$((STEPS * 13 / 15))]" checkpoint_every=250 keep_last=0 output_dir="$RUN"
for ckpt in "$RUN"/checkpoints/step_*; do
  step=${ckpt##*step_}
  OMP_NUM_THREADS=1 python scripts/synthref_table.py --data "$DATA" --split train --threads 1 \
    --model "step${step}=$ckpt" --output "$RUN/eval_$step" | grep "J&F" | head -1
done
OMP_NUM_THREADS=1 python scripts/synthref_diagnose.py --data "$DATA" --split train --videos 20 --sensitivity \
  --threads 1 --model "$RUN/checkpoints/step_$(printf %07d "$STEPS")"
