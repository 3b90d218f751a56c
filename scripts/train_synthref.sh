#!/usr/bin/env bash
# Reproduce the bundled model ssa_tiny.synthref, its two ablations and the results table on a CPU.
# Run from the repository root after `pip install -e .`. Timings of each step on a 2-core CPU machine
# are in docs/synthref.md. Set STEPS=ablations (or STEPS=table) to run only the later parts.
set -euo pipefail

DATA=${DATA:-datasets/synthref}                # training data (seed 0)
HELDOUT=${HELDOUT:-datasets/synthref_heldout}  # the held-out benchmark (seed 1, never trained on)
STEPS=${STEPS:-all}
CKPT=checkpoints/step_0001500                  # the recipe's last step (optim.max_steps)

if [[ $STEPS == all ]]; then
  # 1. SynthRef: 3000 training videos (also the CLIP's captions), 300 for the CLIP's held-out retrieval.
  ssa-rvos synth --out "$DATA" --videos 3000 --valid-videos 300 --frames 12 --size 96 --seed 0 --splits train,valid_u
  ssa-rvos synth --out "$HELDOUT" --videos 300 --valid-videos 300 --frames 12 --size 96 --seed 1 --splits valid_u
  # 2. The tiny CLIP, contrastive on the frames and captions; frozen from here on.
  ssa-rvos pretrain-clip --root "$DATA" --steps 1500 --batch-size 128 --lr 1e-3 --image-size 96 --eval-every 500 \
    -o runs/synthref_clip/ssa_tiny_clip.safetensors
  # 3. The tiny SSA on SynthRef (recipe src/ssa_rvos/training/recipes/synthref.yaml), then the shipped file.
  ssa-rvos train synthref data.datasets.0.root="$DATA" output_dir=runs/synthref
  python scripts/export_model.py runs/synthref/$CKPT src/ssa_rvos/weights/ssa_tiny_synthref.safetensors --fp16 \
    --note "ssa_tiny trained on SynthRef with recipe synthref (scripts/train_synthref.sh)"
fi
if [[ $STEPS == all || $STEPS == ablations ]]; then
  # 4. The ablations, same recipe and budget: frozen CLIP features only; no sequential alignment.
  ssa-rvos train synthref data.datasets.0.root="$DATA" model.use_adapters=false output_dir=runs/synthref_no_adapters
  ssa-rvos train synthref data.datasets.0.root="$DATA" model.sequential_alignment=false \
    output_dir=runs/synthref_no_alignment
fi
# 5. The table: J, F, J&F overall and per expression kind on the held-out split.
python scripts/synthref_table.py --data "$HELDOUT" --output runs/synthref_table \
  --model "SSA (full)=runs/synthref/$CKPT" \
  --model "shipped fp16=ssa_tiny.synthref" \
  --model "w/o adapters=runs/synthref_no_adapters/$CKPT" \
  --model "w/o sequential alignment=runs/synthref_no_alignment/$CKPT"
