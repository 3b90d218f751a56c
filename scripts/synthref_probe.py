"""Does a SynthRef model's video stage know how each object moves? A linear probe.

The model's motion-only sentences fail (docs/synthref.md, "Identical twins"): its scores pick both twins.
Either the video queries do not hold the motion at all, or they hold it and the scores do not bind it to
the sentence's motion words. This script asks the first question directly. For every object of the first
``--train-videos`` videos of a SynthRef split made with ``--train-seed`` (re-drawn with the generator, as
``ssa-rvos synth`` draws them) and of the first ``--test-videos`` made with ``--test-seed``, the model runs
on the whole video with the object's appearance ("the small red star": twins share it, so the sentence
names no motion), and the video query whose mask overlaps the object best (J over all frames >= 0.5) gives
its last-layer video query embedding (the decoder's final norm, what the class and mask heads read).
A multinomial logistic regression on those embeddings (standardised, L2, trained on the train videos)
then predicts the object's motion among still / left / right / up / down (constant-velocity objects
and still ones; bounces, starts and stops are left out) on the test videos. Reported: accuracy, the
majority class's share (chance), and left-vs-right accuracy among objects moving left or right.
High accuracy means the motion is in the video queries and the scores do not read it against the
sentence; accuracy near chance means the video stage never gets the motion.

    python scripts/synthref_probe.py --model ssa_tiny.synthref --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from ssa_rvos.data.synthref import DIRECTIONS, render_video, video_rng
from ssa_rvos.data.transforms import resize_frames, test_resize_shape
from ssa_rvos.postprocess import query_masks
from ssa_rvos.pretrained import load_pretrained
from ssa_rvos.runtime import torch_threads

CLASSES = ("still", *DIRECTIONS)


def embed_objects(model, *, seed: int, split: str, videos: int, frames: int, size: int,
                  min_j: float = 0.5) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features (n, C), labels (n,) indices into CLASSES, counts) for the probed objects of ``videos``
    videos; objects with no query at J >= ``min_j`` are counted and skipped."""
    captured: list[torch.Tensor] = []
    hook = model.video_decoder.norm.register_forward_hook(lambda m, i, o: captured.append(o))
    feats, labels = [], []
    counts = {"objects": 0, "found": 0}
    try:
        for index in range(videos):
            video = render_video(video_rng(seed, split, index), frames=frames, size=size)
            H, W = video.frames.shape[1:3]
            short = model.config.test_short_side or min(H, W)
            resized = resize_frames(video.frames, test_resize_shape(H, W, short=short, max_long=1333))
            clip = torch.from_numpy(np.ascontiguousarray(resized)).permute(0, 3, 1, 2)[None].float()
            runs: dict[str, tuple] = {}
            for obj in video.objects:
                if obj.motion not in CLASSES:
                    continue
                counts["objects"] += 1
                text = f"the {obj.size} {obj.colour} {obj.shape}"
                if text not in runs:
                    captured.clear()
                    out = model(clip, [text])
                    masks, _, _ = query_masks(out.video_mask_embed[-1, -1, 0], out.video_mask_features[0],
                                              padded_size=out.padded_size, image_size=out.image_size,
                                              output_size=(H, W))
                    runs[text] = (captured[-1][0].float(), masks.numpy())  # (N, C), (N, T, H, W)
                queries, masks = runs[text]
                truth = obj.masks[None]
                inter = (masks & truth).sum((1, 2, 3))
                union = (masks | truth).sum((1, 2, 3))
                j = inter / np.maximum(union, 1)
                best = int(j.argmax())
                if j[best] < min_j:
                    continue
                counts["found"] += 1
                feats.append(queries[best].numpy())
                labels.append(CLASSES.index(obj.motion))
    finally:
        hook.remove()
    C = model.video_decoder.norm.normalized_shape[0]
    return (np.stack(feats) if feats else np.zeros((0, C), np.float32)), np.asarray(labels, dtype=np.int64), counts


def fit_probe(x: np.ndarray, y: np.ndarray, *, classes: int, weight_decay: float = 1e-2,
              steps: int = 200) -> tuple[np.ndarray, np.ndarray, torch.nn.Linear]:
    """Standardise x and fit a multinomial logistic regression (L-BFGS, L2 ``weight_decay`` on the
    weights). Returns (mean, std, linear layer)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).float()
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(xt), yt) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, linear


def predict(probe, x: np.ndarray) -> np.ndarray:
    mean, std, linear = probe
    with torch.no_grad():
        return linear(torch.from_numpy((x - mean) / std).float()).argmax(1).numpy()


def report(x_train, y_train, x_test, y_test) -> dict:
    probe = fit_probe(x_train, y_train, classes=len(CLASSES))
    pred = predict(probe, x_test)
    lr = np.isin(y_test, [CLASSES.index("left"), CLASSES.index("right")])
    majority = np.bincount(y_test, minlength=len(CLASSES)).max() / max(len(y_test), 1)
    return {
        "train_objects": int(len(y_train)), "test_objects": int(len(y_test)),
        "train_accuracy": float((predict(probe, x_train) == y_train).mean()),
        "test_accuracy": float((pred == y_test).mean()) if len(y_test) else float("nan"),
        "chance": float(majority),
        "left_right_objects": int(lr.sum()),
        "left_right_accuracy": float((pred[lr] == y_test[lr]).mean()) if lr.any() else float("nan"),
        "test_counts": {c: int((y_test == i).sum()) for i, c in enumerate(CLASSES)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ssa_tiny.synthref", help="bundled name, checkpoint file or folder")
    p.add_argument("--train-videos", type=int, default=300, help="videos to fit the probe on (default: %(default)s)")
    p.add_argument("--test-videos", type=int, default=100, help="videos to test it on (default: %(default)s)")
    p.add_argument("--train-seed", type=int, default=0, help="generator seed of the fitting videos (default: %(default)s)")
    p.add_argument("--test-seed", type=int, default=1, help="generator seed of the test videos (default: %(default)s)")
    p.add_argument("--train-split", default="train", help="split name of the fitting videos (default: %(default)s)")
    p.add_argument("--test-split", default="valid_u", help="split name of the test videos (default: %(default)s)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (default: %(default)s)")
    p.add_argument("--size", type=int, default=96, help="frame size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--output", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    for name in ("train_videos", "test_videos", "frames", "size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    with torch_threads(args.threads or None), torch.inference_mode():
        try:
            model = load_pretrained(args.model).eval()
        except (OSError, ValueError) as exc:
            print(f"error: --model {args.model}: {exc}", file=sys.stderr)
            return 2
        common = {"frames": args.frames, "size": args.size}
        x_train, y_train, c_train = embed_objects(model, seed=args.train_seed, split=args.train_split,
                                                  videos=args.train_videos, **common)
        x_test, y_test, c_test = embed_objects(model, seed=args.test_seed, split=args.test_split,
                                               videos=args.test_videos, **common)
    if len(y_train) < 2 or len(set(y_train.tolist())) < 2:
        print("error: too few objects found to fit a probe (the model's masks miss them)", file=sys.stderr)
        return 1
    with torch.enable_grad():
        result = report(x_train, y_train, x_test, y_test)
    result["model"] = args.model
    result["found"] = {"train": c_train, "test": c_test}
    print(f"probe on {args.model}: {result['train_objects']} fitting objects "
          f"({c_train['found']} of {c_train['objects']} found), {result['test_objects']} test objects "
          f"({c_test['found']} of {c_test['objects']} found)")
    print(f"motion (still / left / right / up / down): test accuracy {100 * result['test_accuracy']:.1f} % "
          f"(fit {100 * result['train_accuracy']:.1f} %, majority class {100 * result['chance']:.1f} %); "
          f"left vs right: {100 * result['left_right_accuracy']:.1f} % of {result['left_right_objects']}")
    if args.output:
        from ssa_rvos.fileio import atomic_write_text

        atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
