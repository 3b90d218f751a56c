"""A checkpoint as a Hugging Face Hub model folder, so converted weights can be shared as safetensors.

    ssa-rvos export-hub ssa_convnext_large.mevis -o hub/ssa-mevis
    huggingface-cli upload OWNER/ssa-mevis hub/ssa-mevis       # by the user; nothing is published here

The folder holds ``model.safetensors`` (the checkpoint, byte for byte: weights and model config),
``config.json`` (the model config and the inference defaults) and ``README.md``, a model card with the
numbers the authors report (for a converted release), the licence, the citation and how to load it:
``--model hf://OWNER/REPO/model.safetensors``.
"""

import json
import os
import shutil
from pathlib import Path

from .fileio import atomic_dir

__all__ = ["CITATION", "export_for_hub"]

FILES = ("model.safetensors", "config.json", "README.md")

CITATION = """@inproceedings{pan2025ssa,
  title     = {Semantic and Sequential Alignment for Referring Video Object Segmentation},
  author    = {Pan, Feiyu and Fang, Hao and Li, Fangkai and Xu, Yanyu and Li, Yawei and Benini, Luca and Lu, Xiankai},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025}
}"""


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _card(name: str, config, metadata: dict[str, str], release) -> str:
    reported = ("\n".join(f"| {split} | {value:.2f} |" for split, value in release.reported)
                if release is not None and release.reported else None)
    results = (f"J&F as reported by the SSA authors for the checkpoint this file was converted from "
               f"(`{release.filename}`, {release.url}); not re-measured by this conversion:\n\n"
               f"| benchmark | J&F |\n| --- | --- |\n{reported}\n") if reported else (
        "No benchmark numbers are recorded for this checkpoint.\n")
    selection = metadata.get("selection", release.selection if release is not None else "union")
    short = config.test_short_side
    return f"""---
license: apache-2.0
library_name: ssa-rvos
tags:
- referring-video-object-segmentation
- video-segmentation
- ssa
---

# {name}

{release.description if release is not None else "An SSA model"} in the
[ssa-rvos](https://pypi.org/project/ssa-rvos/) safetensors format: SSA, "Semantic and Sequential Alignment for
Referring Video Object Segmentation" (CVPR 2025), CLIP `{config.clip.model_name}`, {config.num_queries} queries,
hidden width {config.hidden_dim}. The file holds the whole model, the frozen CLIP included, and its config.

## Results

{results}
## Use

```bash
pip install ssa-rvos
ssa-rvos segment video.mp4 --text "the dog running to the left" --output out/ \\
    --model hf://OWNER/REPO/model.safetensors --selection {selection}
```

```python
from ssa_rvos import SSAPredictor

predictor = SSAPredictor.from_pretrained("hf://OWNER/REPO/model.safetensors", selection="{selection}")
```

Inference defaults: selection `{selection}`{f", test short side {short}" if short else ""}, word mask
`{config.clip.word_mask_rule}` (`config.json`).

## Licence

Apache-2.0, as the authors' code (Tavarich/SSA) that produced the original weights.

## Citation

```bibtex
{CITATION}
```
"""


def export_for_hub(checkpoint: str | os.PathLike, out: str | os.PathLike, *, name: str | None = None) -> Path:
    """Write the Hub folder for one of our checkpoints (a path; see the module docstring). ``out`` must be
    new, empty, or an earlier export (it is then replaced in one step)."""
    from .checkpoint import read_checkpoint
    from .releases import RELEASES

    checkpoint, out = Path(checkpoint), Path(out)
    config, _ = read_checkpoint(checkpoint)  # validates the file
    metadata = _metadata(checkpoint)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
        extra = sorted(p.name for p in out.iterdir() if p.name not in FILES)
        if extra:
            raise ValueError(f"{out}: not empty and not an earlier export (holds {', '.join(extra[:3])}); "
                             "choose a new folder")
    release = RELEASES.get(metadata.get("release", ""))
    name = name or (release.name if release is not None else checkpoint.stem)
    settings = {"model_config": config.to_dict(), "selection": metadata.get("selection", "union"),
                "test_short_side": config.test_short_side, "format": "ssa-rvos safetensors",
                **({"release": release.name, "reported": dict(release.reported),
                    "converted_from": release.filename} if release is not None else {})}
    with atomic_dir(out) as stage:
        shutil.copyfile(checkpoint, stage / "model.safetensors")
        (stage / "config.json").write_text(json.dumps(settings, indent=1) + "\n")
        (stage / "README.md").write_text(_card(name, config, metadata, release))
    return out
