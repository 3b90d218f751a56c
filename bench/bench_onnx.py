"""PyTorch against onnxruntime: the whole engine and the frozen trunk alone, per frame, stage by stage.

For each model (random weights: time does not depend on them) the parent exports the network once
(``ssa_rvos.onnx_export.export_onnx``, into ``--work``) plus the CLIP image trunk alone as one more graph,
then, for every size and backend, a fresh process measures after ``--warmup`` untimed runs the median of
``--repeats`` runs (the two alternated) of

* **trunk**: the frozen CLIP ConvNeXt trunk alone (stem and four stages, no adapters) on the T normalised
  frames, ``--frame-chunk`` at a time: the floor of this design (in PyTorch, or the trunk graph in
  onnxruntime for the onnxruntime rows);
* **whole**: ``SSAPredictor.segment(state, [text])`` on T frames at that size (the state made once at the
  clip's own size, so nothing is resized), the engine every caller runs; with ``SSAPredictor(model)`` or
  ``SSAPredictor.from_onnx(folder)``;
* **stages**: the whole run again with a timer around each call the engine makes on the model (text
  encoding, the frame stage, the video stage, the mask features of pass 2 when not cached, the mask head);
  ``other`` is the rest (frames, chunks, upsampling and thresholding the masks).

Backends: ``pytorch``, and onnxruntime with each ``--ort-levels`` graph optimisation level (``all``: every
fusion, the backend's default; ``basic``; ``off``) at the same thread count as torch.

    python bench/bench_onnx.py --output bench/results/onnx_cpu.json                  # tiny and large, 2 sizes
    python bench/bench_onnx.py --models ssa_tiny --sizes 224x400 --frames 4 --repeats 1 --warmup 0   # quick

Reported per model, size and backend: ms per frame of the trunk and of the whole engine, trunk / whole
(issue 21's goal for the default backend: >= 0.8), the stages' shares, the peak memory (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from benchutil import machine, machine_line, rss_mib, run_child, write_results

TEXT = "the red square moving to the left"
STAGES = ("encode_text", "forward_frames", "forward_video", "forward_mask_features", "mask_logits")


class _Trunk:
    def __init__(self, model) -> None:
        import torch

        class Trunk(torch.nn.Module):
            def __init__(self, trunk) -> None:
                super().__init__()
                self.trunk = trunk

            def forward(self, x):
                x = self.trunk.stem(x)
                for stage in self.trunk.stages:
                    x = stage(x)
                return x

        self.module = Trunk(model.backbone.clip.visual.trunk).eval()


def export_all(model_name: str, work: Path) -> Path:
    """The model's export and its trunk graph in ``work/<model>`` (made once; reused by later runs)."""
    import torch
    from torch.export import Dim

    from ssa_rvos.build import build_model
    from ssa_rvos.onnx_export import MANIFEST, export_onnx

    folder = work / model_name
    if (folder / MANIFEST).is_file() and (work / f"{model_name}_trunk.onnx").is_file():
        return folder
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    start = time.perf_counter()
    export_onnx(model, folder, progress=True)
    print(f"{model_name}: exported in {time.perf_counter() - start:.0f} s", flush=True)
    trunk = _Trunk(model).module
    hs, ws = Dim("hs", min=1, max=64), Dim("ws", min=1, max=64)
    with torch.no_grad():
        program = torch.onnx.export(trunk, (torch.randn(2, 3, 64, 96),), dynamo=True, opset_version=18,
                                    input_names=["images"], output_names=["features"], report=False, verbose=False,
                                    dynamic_shapes=({0: Dim("n", min=1), 2: 32 * hs, 3: 32 * ws},))
    program.save(str(work / f"{model_name}_trunk.onnx"), external_data=False)
    return folder


def measure(args: argparse.Namespace) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from ssa_rvos.build import build_model
    from ssa_rvos.onnx_runtime import session_options
    from ssa_rvos.predictor import SSAPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H, W = args.size
    T, chunk = args.frames, args.frame_chunk
    frames = torch.randint(0, 256, (T, 3, H, W), generator=torch.Generator().manual_seed(0)).float()
    work = Path(args.work)
    if args.backend == "pytorch":
        model = build_model(args.model).eval()
        predictor = SSAPredictor(model, frame_chunk=chunk, short_side=min(H, W), max_long_side=max(H, W))
        trunk = _Trunk(model).module

        def trunk_only() -> None:
            with torch.inference_mode():
                images, _ = model.preprocess(frames)
                for s in range(0, T, chunk):
                    trunk(images[s:s + chunk])
    else:
        level = args.backend.split("-", 1)[1]
        predictor = SSAPredictor.from_onnx(work / args.model, optimization=level, frame_chunk=chunk,
                                           short_side=min(H, W), max_long_side=max(H, W))
        model = predictor.model
        session = ort.InferenceSession(str(work / f"{args.model}_trunk.onnx"), session_options(None, level),
                                       providers=["CPUExecutionProvider"])

        def trunk_only() -> None:
            images, _ = model.preprocess(frames)
            for s in range(0, T, chunk):
                session.run(None, {"images": np.ascontiguousarray(images[s:s + chunk].numpy())})

    state = predictor.init_state(frames.permute(0, 2, 3, 1).to(torch.uint8).numpy())

    def whole() -> None:
        predictor.segment(state, [TEXT])

    def once(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        trunk_only()
        whole()
    # Alternated, so that the machine's drift during the run reaches both sides of the ratio alike.
    trunk_s, whole_s = [], []
    for _ in range(args.repeats):
        trunk_s.append(once(trunk_only))
        whole_s.append(once(whole))
    # the stages: a timer around each call the engine makes on the model
    seconds: dict[str, float] = defaultdict(float)
    originals = {name: getattr(model, name) for name in STAGES}

    def wrap(name, fn):
        def timed_call(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - start
        return timed_call

    for name, fn in originals.items():
        setattr(model, name, wrap(name, fn))
    total = 0.0
    for _ in range(args.repeats):
        start = time.perf_counter()
        whole()
        total += time.perf_counter() - start
    for name in STAGES:
        if name in vars(model):
            delattr(model, name)
    stages = {name: seconds[name] / args.repeats for name in STAGES}
    stages["other"] = total / args.repeats - sum(stages.values())
    t, w = statistics.median(trunk_s), statistics.median(whole_s)
    print(json.dumps({"model": args.model, "backend": args.backend, "size": [H, W], "frames": T,
                      "trunk_seconds": trunk_s, "whole_seconds": whole_s, "trunk_ms_per_frame": 1e3 * t / T,
                      "whole_ms_per_frame": 1e3 * w / T, "trunk_over_whole": t / w, "stages_seconds": stages,
                      "peak_rss_mib": rss_mib(), "machine": machine()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ssa_tiny", "ssa_convnext_large"])
    p.add_argument("--sizes", nargs="+", default=["320x448", "448x800"], help="HxW (default: %(default)s)")
    p.add_argument("--frames", type=int, default=4, help="T (default: %(default)s)")
    p.add_argument("--frame-chunk", type=int, default=18)
    p.add_argument("--ort-levels", nargs="+", default=["all", "basic"], choices=["all", "extended", "basic", "off"])
    p.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default="bench_onnx_work", help="where the exports are kept (default: %(default)s)")
    p.add_argument("--output", help="write the results as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        measure(args)
        return 0
    work = Path(args.work)
    results = []
    for model in args.models:
        export_all(model, work)
        for size in args.sizes:
            H, W = (int(v) for v in size.lower().split("x"))
            for backend in ["pytorch"] + [f"onnxruntime-{lv}" for lv in args.ort_levels]:
                cmd = [sys.executable, __file__, "--child", "--model", model, "--backend", backend, "--size", str(H),
                       str(W), "--frames", str(args.frames), "--frame-chunk", str(args.frame_chunk), "--warmup",
                       str(args.warmup), "--repeats", str(args.repeats), "--work", str(work)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                r = run_child(cmd)
                results.append(r)
                st = r["stages_seconds"]
                total = sum(st.values())
                shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in st.items() if v > 0.005 * total)
                print(f"{model} {H}x{W} T={r['frames']} {backend:22s} trunk {r['trunk_ms_per_frame']:8.1f} ms/frame  "
                      f"whole {r['whole_ms_per_frame']:8.1f} ms/frame  trunk/whole {r['trunk_over_whole']:.2f}  "
                      f"peak {r['peak_rss_mib']:.0f} MiB  [{shares}]", flush=True)
    if results:
        print(machine_line(results[0]["machine"], gpu=False))
    write_results(args.output, args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
