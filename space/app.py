"""The ssa-rvos web demo as a Hugging Face Space (Gradio SDK): this file and requirements.txt are the two
files a Space needs. Locally the same page is `ssa-rvos demo`.

The Space serves the bundled model; set the Space variable SSA_RVOS_MODELS to a comma-separated list of
model names or hf:// paths to offer others in the page's picker, and SSA_RVOS_MAX_FRAMES to change the
longest video a request may segment (default 600). A copy of examples/demo.mp4 placed beside this file
becomes the page's example.
"""

import os
from pathlib import Path

from ssa_rvos.demo import DEFAULT_MAX_FRAMES, DemoEngine, build_app

models = [m.strip() for m in os.environ.get("SSA_RVOS_MODELS", "").split(",") if m.strip()]
engine = DemoEngine({m: m for m in models} or None,
                    max_frames=int(os.environ.get("SSA_RVOS_MAX_FRAMES", DEFAULT_MAX_FRAMES)))
example = Path(__file__).with_name("demo.mp4")
demo = build_app(engine, example=example if example.is_file() else None)

if __name__ == "__main__":
    demo.launch(allowed_paths=[str(engine.root), str(example.parent)])
