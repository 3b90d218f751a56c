"""Identical twins: what SSA's per-frame mask features can tell apart on SynthRef.

SynthRef draws "twins", objects of one size, colour and shape, pixel for pixel alike; only their motion
separates them, and a motion-only sentence ("the star moving to the right") names one of them. SSA draws a
video query's mask in every frame as one embedding dotted with that frame's mask features (SPEC 4.6), and
those features are computed from the frame alone. Two identical objects can therefore only get different
masks through what the features encode of absolute position (padding, the deformable encoder's
position-dependent sampling), and one embedding applies one fixed rule to every frame: a twin that passes
where the other was (crossing paths) cannot be followed by any such rule. This script measures how much
that costs:

* ``position-blind bound``: J&F (MeViS protocol, percent) of the mask that marks every object drawn like
  one of the targets (the targets and their twins), i.e. what a model that reads every word right but
  cannot separate twins would score, by expression kind; and the IoU it gets on each demo sentence
  (``--demo``; the quick start's video, seed 12, 12 frames of 192 px);
* with ``--model``: for every expression with a twin distractor, the fraction of the target's and of the
  twins' pixels the model's mask covers (union of the video queries scoring > 0.5, the protocol's mask),
  and how far apart its video mask features are at twins against at two differently drawn objects of the
  same frame: ``|f_a - f_b| / sqrt(|f_a| |f_b|)`` of the features averaged over each object's pixels.

The videos are drawn again from the split's seed (``synthref.json``), so the objects' appearances are
known; every expression is checked against the split's files.

    python scripts/synthref_twins.py --data datasets/synthref_heldout --videos 100 --demo
    python scripts/synthref_twins.py --data datasets/synthref_heldout --videos 40 --model ssa_tiny.synthref \\
        --output docs/results/synthref_twins.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssa_rvos.data.masks import write_json_atomic
from ssa_rvos.data.synthref import KINDS, render_video, video_name, video_rng
from ssa_rvos.evaluation.metrics import j_and_f
from ssa_rvos.postprocess import query_masks
from ssa_rvos.runtime import torch_threads

DEMO = {"seed": 12, "frames": 12, "size": 192}  # examples/README.md


def twin_union(video, obj_ids: list[int]) -> np.ndarray:
    """(T, H, W) bool: every object drawn like one of ``obj_ids`` (the position-blind mask)."""
    looks = {video.objects[i].appearance for i in obj_ids}
    return np.any([o.masks for o in video.objects if o.appearance in looks], axis=0)


def twins_of(video, obj_ids: list[int]) -> list[int]:
    """The objects drawn like a target that are not targets."""
    looks = {video.objects[i].appearance for i in obj_ids}
    return [o.obj_id for o in video.objects if o.appearance in looks and o.obj_id not in obj_ids]


def target_mask(video, obj_ids: list[int]) -> np.ndarray:
    return np.any([video.objects[i].masks for i in obj_ids], axis=0)


def generated(video, expr) -> dict:
    """The drawn video's expression behind a split's expression (same index), checked against its files."""
    e = video.expressions[int(expr.exp_id)]
    if e["exp"] != expr.raw_text or list(e["obj_id"]) != list(expr.obj_ids):
        raise ValueError(f"{expr.video} expression {expr.exp_id}: the split's files do not match the video drawn "
                         "again from synthref.json (another generator version?)")
    return e


def fixed_rule(video, obj_ids: list[int]) -> np.ndarray:
    """(T, H, W) bool: the position-blind mask cut by one pixel set S shared by every frame, S = the pixels
    the targets cover in more frames than their twins do (a good, not always the best, frame-independent
    rule: what one embedding over features that encoded absolute position exactly could draw)."""
    gt = target_mask(video, obj_ids)
    twins = twins_of(video, obj_ids)
    if not twins:
        return twin_union(video, obj_ids)
    other = np.any([video.objects[i].masks for i in twins], axis=0)
    keep = gt.sum(0) > other.sum(0)
    return twin_union(video, obj_ids) & keep[None]


def jf(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    j, f = j_and_f(gt, pred)
    return float(j.mean()), float(f.mean())


def demo_report() -> list[dict]:
    video = render_video(DEMO["seed"], frames=DEMO["frames"], size=DEMO["size"])
    rows = []
    for e in video.expressions:
        gt, blind = target_mask(video, e["obj_id"]), twin_union(video, e["obj_id"])
        rule = fixed_rule(video, e["obj_id"])
        rows.append({"exp": e["exp"], "kind": e["kind"], "twins": len(twins_of(video, e["obj_id"])),
                     "iou": float((gt & blind).sum() / (gt | blind).sum()),
                     "fixed_rule_iou": float((gt & rule).sum() / (gt | rule).sum())})
    return rows


def _features_at(features: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """Mean feature (T, C) over each frame's object pixels; features (T, C, h, w) at stride 4 of the frame,
    masks (T, H, W) bool at the frame's size (area-resized to the feature grid as weights). NaN where the
    object is not visible."""
    t, c, h, w = features.shape
    weight = F.interpolate(torch.from_numpy(masks).float()[:, None], size=(h, w), mode="area")[:, 0]  # (T, h, w)
    total = weight.sum((1, 2))
    mean = torch.einsum("tchw,thw->tc", features.float(), weight) / total.clamp_min(1e-6)[:, None]
    mean[total < 0.25] = float("nan")  # under a quarter of a feature cell: not visible enough
    return mean.numpy()


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame |a - b| / sqrt(|a| |b|), NaN where either is missing."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.linalg.norm(a - b, axis=1) / np.sqrt(na * nb)


def _slot_objects(frame_masks: torch.Tensor, trajectory: torch.Tensor, objects: list) -> np.ndarray:
    """(T, N) the object each trajectory slot's frame mask covers best in each frame (IoU at stride 4,
    -1 where it is below 0.3): frame_masks (T, N, h, w) logits in each frame's own query order,
    trajectory (T, N) the permutation the video stage chained them with."""
    t, n, h, w = frame_masks.shape
    aligned = frame_masks.gather(1, trajectory[:, :, None, None].expand(-1, -1, h, w)) > 0  # (T, N, h, w)
    objs = torch.stack([F.interpolate(torch.from_numpy(o.masks).float()[:, None], size=(h, w), mode="area")[:, 0] > 0.5
                        for o in objects], dim=1)  # (T, O, h, w)
    inter = torch.einsum("tnhw,tohw->tno", aligned.float(), objs.float())
    union = aligned.sum((2, 3))[:, :, None] + objs.sum((2, 3))[:, None, :] - inter
    iou = inter / union.clamp_min(1)
    best = iou.argmax(-1)
    return torch.where(iou.max(-1).values >= 0.3, best, torch.full_like(best, -1)).numpy()


def model_report(model, dataset, videos: list, split_videos: list[str]) -> dict:
    from ssa_rvos.data.transforms import resize_frames, test_resize_shape

    cover = defaultdict(lambda: {"target": [], "twins": []})
    # trajectory steps from a frame where the slot holds an object that has a twin to the next frame where
    # it holds some object: does it stay on the same one, or jump to its twin / to another object?
    steps = {"same": 0, "twin": 0, "other": 0}
    twin_d, other_d = [], []
    for name, video in zip(split_videos, videos):
        exprs = dataset.video_expressions(name)
        if not exprs:
            continue
        frames = dataset.read_frames(name, list(exprs[0].frames))
        H, W = frames.shape[1:3]
        size = test_resize_shape(H, W, short=model.config.test_short_side or min(H, W), max_long=1333)
        clip = torch.from_numpy(np.ascontiguousarray(resize_frames(frames, size))).permute(0, 3, 1, 2)[None].float()
        features = None
        for expr in exprs:
            out = model(clip, [expr.text])
            scores = out.video_scores()[-1, 0]
            masks, _, _ = query_masks(out.video_mask_embed[-1, -1, 0], out.video_mask_features[0],
                                      padded_size=out.padded_size, image_size=out.image_size, output_size=(H, W))
            chosen = (scores > 0.5).numpy()
            union = masks.numpy()[chosen].any(0) if chosen.any() else np.zeros((len(frames), H, W), dtype=bool)
            obj_ids = list(expr.obj_ids)
            twins = twins_of(video, obj_ids)
            if twins:
                kind = generated(video, expr)["kind"]
                gt, other = target_mask(video, obj_ids), np.any([video.objects[i].masks for i in twins], axis=0)
                for group in ("overall", kind):
                    cover[group]["target"].append(float((union & gt).sum() / max(gt.sum(), 1)))
                    cover[group]["twins"].append(float((union & other).sum() / max(other.sum(), 1)))
            looks = [o.appearance for o in video.objects]
            ih, iw = out.image_size  # the frame masks without the padding, on the objects' grid
            slots = _slot_objects(out.frame_masks[-1, 0][..., :-(-ih // 4), :-(-iw // 4)], out.trajectory[-1, 0],
                                  video.objects)
            for j in range(slots.shape[1]):
                held = [o for o in slots[:, j] if o >= 0]
                for a, b in zip(held, held[1:]):
                    if looks.count(looks[a]) > 1:
                        steps["same" if a == b else "twin" if looks[a] == looks[b] else "other"] += 1
            if features is None:
                # The video mask features at the frame's own size (crop the padding), one sentence's worth:
                # they depend on the sentence only through the text-conditioned layers, measured per video.
                h, w = out.image_size
                fh, fw = -(-h // 4), -(-w // 4)
                features = out.video_mask_features[0][..., :fh, :fw]
        if features is None:
            continue
        # resize the feature grid's own masks: the objects at the model's input size
        obj_feats = [_features_at(features, o.masks) for o in video.objects]
        for a in range(len(video.objects)):
            for b in range(a + 1, len(video.objects)):
                d = _distance(obj_feats[a], obj_feats[b])
                same = video.objects[a].appearance == video.objects[b].appearance
                (twin_d if same else other_d).extend(d[np.isfinite(d)].tolist())
    total = max(sum(steps.values()), 1)
    return {
        "trajectory_steps_on_twins": {"steps": sum(steps.values()), **{k: v / total for k, v in steps.items()}},
        "coverage": {g: {"expressions": len(v["target"]), "target": float(np.mean(v["target"])),
                         "twins": float(np.mean(v["twins"]))} for g, v in cover.items()},
        "feature_distance": {"twins": {"frames": len(twin_d), "median": float(np.median(twin_d)),
                                       "mean": float(np.mean(twin_d))},
                             "different_objects": {"frames": len(other_d), "median": float(np.median(other_d)),
                                                   "mean": float(np.mean(other_d))}},
    }


def bound_report(dataset, videos: list, split_videos: list[str]) -> dict:
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"J": [], "F": [], "rule": [], "twins": []})
    for name, video in zip(split_videos, videos):
        for expr in dataset.video_expressions(name):
            e = generated(video, expr)
            gt = target_mask(video, e["obj_id"])
            j, f = jf(gt, twin_union(video, e["obj_id"]))
            jr, fr = jf(gt, fixed_rule(video, e["obj_id"]))
            for group in ("overall", e["kind"]):
                rows[group]["J"].append(j)
                rows[group]["F"].append(f)
                rows[group]["rule"].append((jr + fr) / 2)
                rows[group]["twins"].append(bool(twins_of(video, e["obj_id"])))
    return {g: {"expressions": len(r["J"]), "with_twins": int(np.sum(r["twins"])),
                "J&F": 50 * (np.mean(r["J"]) + np.mean(r["F"])), "J": 100 * np.mean(r["J"]),
                "F": 100 * np.mean(r["F"]), "fixed_rule_J&F": 100 * np.mean(r["rule"])} for g, r in rows.items()}


def print_table(columns: list[str], rows: dict[str, dict], cells) -> None:
    """A markdown table, one row per expression kind present in ``rows`` (overall first)."""
    print("| kind | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for group in ("overall", *KINDS):
        if group in rows:
            print(f"| {group} | " + " | ".join(str(c) for c in cells(rows[group])) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="SynthRef folder")
    p.add_argument("--split", default="valid_u", help="split (default: %(default)s)")
    p.add_argument("--videos", type=int, default=100, help="first N videos of the split (default: %(default)s)")
    p.add_argument("--demo", action="store_true", help="also the position-blind IoU of each demo sentence")
    p.add_argument("--model", default=None, help="also measure a model (bundled name, checkpoint file or folder)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--output", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    from ssa_rvos.data import MeViS

    info_path = Path(args.data) / args.split / "synthref.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as err:
        print(f"error: {info_path}: expected a SynthRef split's synthref.json ({err})", file=sys.stderr)
        return 2
    if args.videos < 1:
        p.error(f"--videos: expected at least 1, got {args.videos}")
    n = min(args.videos, int(info["videos"]))
    dataset = MeViS(args.data, args.split)
    names = [video_name(args.split, i) for i in range(n)]
    videos = [render_video(video_rng(int(info["seed"]), args.split, i), frames=int(info["frames"]),
                           size=tuple(info["size"])) for i in range(n)]
    try:
        bound = bound_report(dataset, videos, names)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result: dict = {"data": {"split": args.split, "seed": int(info["seed"]), "videos": n},
                    "position_blind_bound": bound}
    print(f"Position-blind bound (J&F, percent; first {n} videos of {args.split}, seed {info['seed']})")
    print_table(["expressions", "with twins", "J&F", "J", "F", "one fixed rule: J&F"], bound,
                lambda r: [r["expressions"], r["with_twins"], *(f"{r[k]:.1f}" for k in ("J&F", "J", "F", "fixed_rule_J&F"))])
    if args.demo:
        result["demo"] = demo_report()
        print("\nDemo (seed 12): position-blind / one fixed rule IoU per sentence")
        for r in result["demo"]:
            print(f"  {r['iou']:.2f} / {r['fixed_rule_iou']:.2f}  ({r['kind']}, {r['twins']} twin(s))  {r['exp']}")
    if args.model:
        from ssa_rvos.pretrained import load_pretrained

        with torch_threads(args.threads), torch.inference_mode():
            model = load_pretrained(args.model, device="cpu").eval()
            result["model"] = {"model": args.model, **model_report(model, dataset, videos, names)}
        m = result["model"]
        print(f"\n{args.model}: share of pixels its mask covers, expressions with a twin distractor")
        print_table(["expressions", "target", "twins"], m["coverage"],
                    lambda c: [c["expressions"], f"{100 * c['target']:.1f}", f"{100 * c['twins']:.1f}"])
        st = m["trajectory_steps_on_twins"]
        print(f"trajectory slots on an object with a twin, {st['steps']} steps to the next frame's object: "
              f"same object {100 * st['same']:.1f} %, its twin {100 * st['twin']:.1f} %, another {100 * st['other']:.1f} %")
        d = m["feature_distance"]
        print(f"video mask features, |f_a - f_b| / sqrt(|f_a| |f_b|), median over object pairs and frames: "
              f"twins {d['twins']['median']:.3f} ({d['twins']['frames']}), "
              f"differently drawn {d['different_objects']['median']:.3f} ({d['different_objects']['frames']})")
    if args.output:
        write_json_atomic(Path(args.output), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
