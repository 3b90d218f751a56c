"""SynthRef generator: determinism, the MeViS layout, and every expression / mask / caption checked against
what was drawn, with an independent reading of the sentences (keywords) and of the motion (trajectories
and mask centroids) rather than the generator's own predicates."""

import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from ssa_rvos.data import MeViS
from ssa_rvos.data.masks import rle_decode
from ssa_rvos.data.synthref import (
    COLOURS,
    KINDS,
    MOTIONS,
    SHAPES,
    SIZES,
    classify_trajectory,
    generate,
    generate_split,
    motion_truth,
    render_video,
    video_name,
    video_rng,
    write_demo_video,
)

FRAMES, SIZE, SEED = 8, 64, 7
TRAIN, VALID = 40, 6
PLURALS = {f"{s}s": s for s in SHAPES}
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "both": 2}


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthref")
    info = generate(root, videos=TRAIN, frames=FRAMES, size=SIZE, seed=SEED, valid_videos=VALID)
    return root, info


@pytest.fixture(scope="module")
def train(split_root):
    """(reader, {video: SynthVideo}, meta) of the train split."""
    root, _ = split_root
    ds = MeViS(root, "train")
    videos = {video_name("train", i): render_video(video_rng(SEED, "train", i), frames=FRAMES, size=SIZE)
              for i in range(TRAIN)}
    meta = json.loads((root / "train" / "meta_expressions.json").read_text())["videos"]
    return ds, videos, meta


# ---------------------------------------------------------------------------------- reading the sentences

_PREDICATE_PHRASES = [  # first match wins: "still at first" is a start, "stops" before "moving"
    ("starts", ("starts moving", "start moving", "begins to move", "begin to move", "still at first")),
    ("stops", ("stops moving", "stop moving", "comes to a stop", "come to a stop", "then stops", "stops halfway")),
    ("bounce", ("bounc", "back and forth")),
    ("still", ("not moving", "standing still", "motionless", "does not move", "do not move", "stays in place")),
    ("left", (" left",)),
    ("right", (" right",)),
    ("up", (" up ", " upwards ")),
    ("down", (" down ", " downwards ")),
    ("moving", ("moving", "in motion")),
]


def _parse(text: str) -> tuple[dict, str | None, int | None]:
    """A sentence -> (appearance words {attr: value}, motion predicate or None, count word or None)."""
    words = text.split()
    attrs = {}
    for w in words:
        if w in SIZES:
            attrs["size"] = w
        elif w in COLOURS:
            attrs["colour"] = w
        elif w in SHAPES or w in PLURALS:
            attrs["shape"] = PLURALS.get(w, w)
    padded = f" {text} "
    predicate = next((p for p, phrases in _PREDICATE_PHRASES if any(ph in padded for ph in phrases)), None)
    count = next((NUMBERS[w] for w in words if w in NUMBERS), None)
    return attrs, predicate, count


def _holds(obj, predicate: str, eps: float = 0.05) -> bool | None:
    """Independent truth of a motion word from the object's centre track: True / False / None (partly)."""
    d = np.diff(obj.centers, axis=0)
    moving = np.abs(d).max(axis=1) > eps

    def all_any(steps: np.ndarray) -> bool | None:
        return True if steps.all() else False if not steps.any() else None

    if predicate == "still":
        return all_any(~moving)
    if predicate == "moving":
        return all_any(moving)
    if predicate in ("left", "right", "up", "down"):
        way = {"left": -d[:, 0], "right": d[:, 0], "up": -d[:, 1], "down": d[:, 1]}[predicate]
        return all_any(way > eps)
    if predicate == "bounce":
        if not moving.all():
            return False
        for ax in (0, 1):
            s = np.sign(d[:, ax])
            if (np.abs(d[:, 1 - ax]) <= eps).all() and (s != 0).all() and int((s[1:] != s[:-1]).sum()) == 1:
                return True
        return False
    n = len(moving)
    k = int(moving.sum())
    if predicate == "stops":
        return bool(2 <= k <= n - 2 and moving[:k].all())
    if predicate == "starts":
        return bool(2 <= k <= n - 2 and moving[n - k:].all())
    raise AssertionError(predicate)


def _matches(obj, attrs: dict) -> bool:
    return all(getattr(obj, a) == v for a, v in attrs.items())


# ------------------------------------------------------------------------------------------ determinism

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_files(tmp_path):
    kwargs = {"split": "valid_u", "videos": 4, "frames": 6, "size": 48}
    generate_split(tmp_path / "a", seed=3, **kwargs)
    generate_split(tmp_path / "b", seed=3, **kwargs)
    generate_split(tmp_path / "c", seed=4, **kwargs)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b and len(a) == 4 * 6 + 4
    assert a.keys() == c.keys()
    for name in ("meta_expressions.json", "mask_dict.json", "captions.json"):
        assert a[f"valid_u/{name}"] != c[f"valid_u/{name}"]
    assert a["valid_u/JPEGImages/valid_u_00000/00000.jpg"] != c["valid_u/JPEGImages/valid_u_00000/00000.jpg"]
    # splits draw from (seed, split): train and valid_u differ for one seed
    assert not np.array_equal(render_video(video_rng(3, "train", 0), frames=6, size=48).frames,
                              render_video(video_rng(3, "valid_u", 0), frames=6, size=48).frames)
    info = json.loads((tmp_path / "a" / "valid_u" / "synthref.json").read_text())
    assert {k: info[k] for k in ("seed", "videos", "frames", "size", "split")} == {
        "seed": 3, "videos": 4, "frames": 6, "size": [48, 48], "split": "valid_u"}
    assert info["version"] >= 1


def test_render_video_is_a_function_of_its_seed():
    a, b = render_video(5, frames=6, size=(48, 64)), render_video(5, frames=6, size=(48, 64))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert a.expressions == b.expressions and a.captions == b.captions
    frames, objects, expressions = a  # unpacks as the documented triple
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    assert a.masks.shape == (len(objects), 6, 48, 64) and a.masks.dtype == bool
    assert not np.array_equal(frames, render_video(6, frames=6, size=(48, 64)).frames)


# ---------------------------------------------------------------------------------------------- layout

def test_split_reads_as_mevis_and_matches_the_rendered_videos(split_root, train):
    root, info = split_root
    ds, videos, meta = train
    assert set(info) == {"train", "valid_u"} and info["train"]["videos"] == TRAIN
    assert len(MeViS(root, "valid_u").videos()) == VALID
    assert ds.videos() == sorted(videos)
    mask_dict = json.loads((root / "train" / "mask_dict.json").read_text())
    anno_of: dict[tuple[str, int], int] = {}
    for name, entry in meta.items():
        assert entry["frames"] == [f"{t:05d}" for t in range(FRAMES)]
        for exp in entry["expressions"].values():
            assert set(exp) == {"exp", "obj_id", "anno_id", "kind"} and exp["kind"] in KINDS
            assert len(exp["obj_id"]) == len(exp["anno_id"]) >= 1
            for o, a in zip(exp["obj_id"], exp["anno_id"]):
                assert anno_of.setdefault((name, o), a) == a  # one anno_id per object
    assert len(set(anno_of.values())) == len(anno_of)  # unique over the split
    for rles in mask_dict.values():
        assert len(rles) == FRAMES
        for rle in rles:
            assert rle is None or (rle["size"] == [SIZE, SIZE] and rle_decode(rle).shape == (SIZE, SIZE)
                                   and rle_decode(rle).any())  # empty masks are written as null
    checked = 0
    for expr in ds:
        video = videos[expr.video]
        inst = ds.instance_masks(expr)
        assert inst.shape == (len(expr.obj_ids), FRAMES, SIZE, SIZE)
        for n, o in enumerate(expr.obj_ids):
            assert np.array_equal(inst[n], video.objects[o].masks)
        assert np.array_equal(ds.target_masks(expr), inst.any(axis=0))
        checked += 1
    assert checked == len(ds) > 4 * TRAIN
    frames = ds.read_frames(ds.videos()[0])
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert np.abs(frames.astype(int) - videos[ds.videos()[0]].frames).mean() < 3  # JPEG at quality 95


def _eroded(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _dilated(mask: np.ndarray) -> np.ndarray:
    return ~_eroded(~mask)


def test_masks_have_the_colour_shape_and_size_of_their_object(train):
    ds, videos, _ = train
    largest: dict[tuple[str, str], list[int]] = {}
    checked = 0
    shapes: Counter = Counter()
    for name, video in videos.items():
        images = ds.read_frames(name).astype(int)
        for obj in video.objects:
            areas = obj.masks.sum(axis=(1, 2))
            largest.setdefault((obj.shape, obj.size), []).append(int(areas.max()))
            for t in range(FRAMES):
                inner = _eroded(obj.masks[t])
                if inner.sum() >= 10:
                    mean = images[t][inner].mean(axis=0)
                    assert np.abs(mean - COLOURS[obj.colour]).max() < 30, (name, obj, t, mean)
                    checked += 1
            others = np.zeros_like(obj.masks)
            for other in video.objects:
                if other is not obj:
                    others |= other.masks
            for t in range(FRAMES):
                ys, xs = np.nonzero(obj.masks[t])
                # whole silhouettes only: off the border, and no other object next to it (an occluder would be)
                if not len(ys) or min(ys.min(), xs.min()) == 0 or max(ys.max(), xs.max()) == SIZE - 1:
                    continue
                if (_dilated(obj.masks[t]) & others[t]).any():
                    continue
                box = obj.masks[t][ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                fill = box.mean()
                bottom = box[-1].sum() / box.shape[1]
                expected = {"square": fill > 0.95, "circle": 0.65 < fill <= 0.9,
                            "triangle": fill < 0.7 and bottom > 0.6, "star": fill < 0.62 and bottom < 0.45}
                assert expected[obj.shape], (name, obj, t, fill, bottom)
                shapes[obj.shape] += 1
    assert checked > 500 and min(shapes[s] for s in SHAPES) > 20, (checked, shapes)
    for shape in SHAPES:  # sizes never overlap: any big one is larger than any small one
        assert min(largest[(shape, "big")]) > max(largest[(shape, "small")]), shape


def test_null_masks_where_an_object_is_outside_the_frame(split_root, train):
    root, _ = split_root
    _, videos, meta = train
    mask_dict = json.loads((root / "train" / "mask_dict.json").read_text())
    outside = 0
    for name, video in videos.items():
        annos = {o: a for e in meta[name]["expressions"].values() for o, a in zip(e["obj_id"], e["anno_id"])}
        for obj in video.objects:
            for t, (x, y) in enumerate(obj.centers):
                e = obj.extent
                if x + e < 0 or x - e > SIZE or y + e < 0 or y - e > SIZE:
                    assert not obj.masks[t].any()
                    if obj.obj_id in annos:
                        assert mask_dict[str(annos[obj.obj_id])][t] is None
                    outside += 1
                elif min(x, y) - e >= 0 and max(x, y) + e <= SIZE and obj.masks[t].sum() < 0.35 * obj.area:
                    # wholly inside the frame: only occlusion can hide it, and never more than half of it
                    # (less a margin: a 7 px wide shape has 49 or 64 pixels depending on its sub-pixel offset)
                    pytest.fail(f"{name}: object {obj.obj_id} mostly hidden in frame {t}, inside the frame")
    assert outside > 0  # the fixture does contain objects that leave the frame


# ------------------------------------------------------------------------------------------ expressions

def test_every_expression_is_true_and_unambiguous(train):
    """Re-derive each target set from the words of the sentence and the drawn tracks."""
    _, videos, _ = train
    total = 0
    for name, video in videos.items():
        objects = video.objects
        twins = Counter(o.appearance for o in objects)
        for exp in video.expressions:
            text, kind, targets = exp["exp"], exp["kind"], set(exp["obj_id"])
            attrs, predicate, count = _parse(text)
            cands = [o for o in objects if _matches(o, attrs)]
            if predicate is None:
                selected = {o.obj_id for o in cands}
            else:
                truth = {o.obj_id: _holds(o, predicate) for o in cands}
                assert None not in truth.values(), (name, text, truth)  # no half-true reading
                selected = {i for i, v in truth.items() if v}
            assert selected == targets, (name, text, targets, selected)
            if kind == "appearance":
                assert predicate is None and attrs and len(targets) == 1
                assert twins[objects[next(iter(targets))].appearance] == 1
            elif kind == "motion":
                (o,) = targets
                assert set(attrs) <= {"shape"}, text  # neither colour nor size
                assert twins[objects[o].appearance] == 2, text  # an identical twin, told apart by motion only
                assert predicate in ("still", "moving", "left", "right", "up", "down", "bounce")
            elif kind == "appearance_motion":
                assert len(targets) == 1 and attrs and predicate in ("still", "moving", "left", "right", "up",
                                                                      "down", "bounce")
            elif kind == "temporal":
                assert len(targets) == 1 and predicate in ("starts", "stops")
            else:
                assert kind == "multi" and 2 <= len(targets) < len(objects)
                assert count is None or count == len(targets), text
            total += 1
        assert len({e["exp"] for e in video.expressions}) == len(video.expressions)
    assert total > 4 * TRAIN


def _whole(masks: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Frames (indices) where an object's whole silhouette shows: off the frame border and with no other
    object next to it (an occluder would touch what is left of it)."""
    keep = []
    for t in range(len(masks)):
        ys, xs = np.nonzero(masks[t])
        h, w = masks[t].shape
        if len(ys) and min(ys.min(), xs.min()) > 0 and ys.max() < h - 1 and xs.max() < w - 1 \
                and not (_dilated(masks[t]) & others[t]).any():
            keep.append(t)
    return np.array(keep, dtype=int)


def test_motion_words_hold_on_the_written_masks(train):
    """The masks in mask_dict.json follow the drawn tracks, and move the way the sentence says."""
    ds, videos, _ = train
    checked = Counter()
    for expr in ds:
        video = videos[expr.video]
        (exp,) = [e for e in video.expressions if e["exp"] == expr.raw_text]
        _, predicate, _ = _parse(exp["exp"])
        inst = ds.instance_masks(expr)
        for n, o in enumerate(expr.obj_ids):
            obj = video.objects[o]
            others = video.masks[[i for i in range(len(video.objects)) if i != o]].any(axis=0)
            whole = _whole(inst[n], others)
            # + 0.5: pixel j covers [j, j + 1) in the coordinates of the centres
            c = np.array([[np.nonzero(inst[n][t])[1].mean(), np.nonzero(inst[n][t])[0].mean()] for t in whole]) + 0.5
            if len(whole):  # a whole silhouette is centred on the drawn centre (all four shapes are symmetric)
                assert np.abs(c - obj.centers[whole]).max() < 0.75, (expr, c, obj.centers[whole])
            if predicate is None or len(whole) < 2:
                continue
            ax = {"left": 0, "right": 0, "up": 1, "down": 1}.get(predicate, 0 if obj.axis == "x" else 1)
            steps = np.diff(c[:, ax])
            if predicate in ("left", "up"):
                assert c[-1, ax] - c[0, ax] < -1 and (steps < 0).all(), (expr, c)
            elif predicate in ("right", "down"):
                assert c[-1, ax] - c[0, ax] > 1 and (steps > 0).all(), (expr, c)
            elif predicate == "still":
                assert all(np.array_equal(inst[n][whole[0]], inst[n][t]) for t in whole), expr
            elif predicate == "moving":
                assert np.abs(c[-1] - c[0]).max() > 1 or obj.motion == "bounce", (expr, c)
            elif predicate == "bounce":
                if not ((steps > 0).any() and (steps < 0).any()):
                    continue  # the whole silhouettes all lie on one leg
                assert np.abs(c[:, 1 - ax] - c[0, 1 - ax]).max() < 0.75, (expr, c)  # along one axis only
            elif predicate in ("stops", "starts"):
                # frames 0..switch are one regime, switch..T-1 the other (the switch frame belongs to both)
                rest = whole[whole >= obj.switch] if predicate == "stops" else whole[whole <= obj.switch]
                move = whole[whole <= obj.switch] if predicate == "stops" else whole[whole >= obj.switch]
                assert all(np.array_equal(inst[n][rest[0]], inst[n][t]) for t in rest), (expr, obj.switch)
                if len(move) >= 2:
                    p = c[np.isin(whole, move)]
                    assert np.abs(p[-1] - p[0]).max() > 1, (expr, c, obj.switch)
                # the stop (start) happens in the middle of the clip, not at its very start or end
                assert FRAMES / 4 <= obj.switch <= 3 * FRAMES / 4
            checked[predicate] += 1
    assert set(checked) >= {"left", "right", "up", "down", "still", "moving", "bounce", "stops", "starts"}, checked


def _pattern(text: str) -> str:
    """A sentence with its appearance and count words blanked: what is left is its template."""
    blanks = set(SIZES) | set(COLOURS) | set(SHAPES) | set(PLURALS) | set(NUMBERS) | {"object", "one", "shape",
                                                                                      "objects", "shapes"}
    return " ".join("_" if w in blanks else w for w in text.split())


def test_every_kind_appears_with_several_phrasings(train):
    _, videos, _ = train
    patterns: dict[str, set[str]] = {k: set() for k in KINDS}
    with_motion = 0
    for video in videos.values():
        for e in video.expressions:
            patterns[e["kind"]].add(_pattern(e["exp"]))
        with_motion += any(e["kind"] == "motion" for e in video.expressions)
    for kind in KINDS:
        assert len(patterns[kind]) >= 3, (kind, patterns[kind])
    assert with_motion >= 0.4 * len(videos)
    motions = Counter(o.motion for v in videos.values() for o in v.objects)
    assert set(motions) == set(MOTIONS), motions
    assert Counter(len(v.objects) for v in videos.values()).keys() == {2, 3, 4, 5}


def test_captions_name_only_what_one_frame_shows(split_root, train):
    root, _ = split_root
    _, videos, meta = train
    captions = json.loads((root / "train" / "captions.json").read_text())
    assert captions.keys() == videos.keys()
    phrase = re.compile(rf"\b(a|two|three|four|five) ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) "
                        rf"({'|'.join(list(SHAPES) + list(PLURALS))})\b")
    motion_words = re.compile(r"\b(moving|moves|left|right|up|down|still|bounc\w*|stops?|starts?)\b")
    for name, video in videos.items():
        assert list(captions[name]) == meta[name]["frames"]
        for t, frame in enumerate(meta[name]["frames"]):
            lines = captions[name][frame]
            assert lines and all(isinstance(s, str) and s for s in lines)
            visible = Counter(o.appearance for o in video.objects if o.masks[t].any())
            named: Counter = Counter()
            for line in lines:
                assert not motion_words.search(line), line
                for count, size, colour, shape in phrase.findall(line):
                    app = (size, colour, PLURALS.get(shape, shape))
                    n = 1 if count == "a" else NUMBERS[count]
                    assert n <= visible[app], (name, frame, line, visible)
                    named[app] = max(named[app], n)
            assert set(named) <= set(visible)
            scene = lines[0]
            assert video.background in {"noise": "mottled", "stripes": "striped", "checker": "checkered",
                                        "gradient": "gradient", "plain": "plain"} and \
                {"noise": "mottled", "stripes": "striped", "checker": "checkered", "gradient": "gradient",
                 "plain": "plain"}[video.background] in scene
            # well visible objects are always named
            for o in video.objects:
                if o.masks[t].sum() >= 0.5 * o.area:
                    assert named[o.appearance] >= 1, (name, frame, lines, o)



def test_referring_captions_add_true_phrases_and_change_nothing_else(tmp_path):
    """--referring-captions: the same frames, masks and expressions; every frame's captions the plain ones
    followed by, for each object showing >= 30 % of its area, its four phrases, each true of it as read
    from its decoded mask (colour and shape words of the object, side from the mask's mean pixel)."""
    kwargs = {"split": "train", "videos": 12, "frames": 6, "size": (48, 64), "seed": SEED}
    generate_split(tmp_path / "plain", **kwargs)
    info = generate_split(tmp_path / "ref", referring_captions=True, **kwargs)
    plain, ref = _tree(tmp_path / "plain"), _tree(tmp_path / "ref")
    assert plain.keys() == ref.keys()
    assert [k for k in plain if plain[k] != ref[k]] == ["train/captions.json", "train/synthref.json"]
    assert info["referring_captions"] is True
    assert json.loads(plain["train/synthref.json"])["referring_captions"] is False
    base, extra = json.loads(plain["train/captions.json"]), json.loads(ref["train/captions.json"])
    meta = json.loads(ref["train/meta_expressions.json"])["videos"]
    mask_dict = json.loads(ref["train/mask_dict.json"])
    phrase = re.compile(rf"the (?:({'|'.join(COLOURS)})|({'|'.join(SIZES)})) ({'|'.join(SHAPES)})"
                        r"(?: (on the left|on the right|at the top|at the bottom))?")
    added_total = first_anno = 0
    for i in range(kwargs["videos"]):
        name = video_name("train", i)
        video = render_video(video_rng(SEED, "train", i), frames=6, size=(48, 64))
        ids = {o.obj_id: first_anno + k for k, o in enumerate(video.objects)}  # anno_ids run in video order
        first_anno += len(video.objects)
        for t, frame in enumerate(meta[name]["frames"]):
            lines = extra[name][frame]
            assert lines[:len(base[name][frame])] == base[name][frame]
            added = lines[len(base[name][frame]):]
            assert len(added) == len(set(added)) and not set(added) & set(base[name][frame])
            added_total += len(added)
            shown = []
            for o in video.objects:
                rle = mask_dict[str(ids[o.obj_id])][t]
                mask = rle_decode(rle) if rle is not None else np.zeros((48, 64), bool)
                assert np.array_equal(mask, o.masks[t])
                if mask.sum() >= 0.3 * o.area:
                    ys, xs = np.nonzero(mask)
                    shown.append((o, "on the left" if xs.mean() < 32 else "on the right",
                                  "at the top" if ys.mean() < 24 else "at the bottom"))
            for line in added:
                m = phrase.fullmatch(line)
                assert m, line
                colour, size, shape, where = m.groups()
                assert any(o.shape == shape and (colour in (None, o.colour)) and (size in (None, o.size))
                           and (where in (None, lr, tb)) and not (colour is None and where is not None)
                           for o, lr, tb in shown), (name, frame, line)
            for o, lr, tb in shown:
                assert {f"the {o.colour} {o.shape}", f"the {o.size} {o.shape}", f"the {o.colour} {o.shape} {lr}",
                        f"the {o.colour} {o.shape} {tb}"} <= set(added), (name, frame, o)
    assert added_total > 12 * 6 * 2


# ---------------------------------------------------------------------------------------- motion logic

def test_classify_trajectory_and_motion_truth():
    t = np.arange(8, dtype=float)
    still = np.stack([np.full(8, 5.0), np.full(8, 9.0)], axis=1)
    left = np.stack([20 - 2 * t, np.full(8, 9.0)], axis=1)
    bounce = np.stack([np.full(8, 3.0), 30 - 3 * np.abs(t - 4)], axis=1)
    stops = np.stack([np.minimum(t, 3) * 2, np.full(8, 1.0)], axis=1)
    starts = np.stack([np.full(8, 1.0), 10 - np.maximum(t - 4, 0) * 2], axis=1)
    assert classify_trajectory(still) == ("still", None)
    assert classify_trajectory(left) == ("left", None)
    assert classify_trajectory(bounce) == ("bounce", "y")
    assert classify_trajectory(stops) == ("stops", "right")
    assert classify_trajectory(starts) == ("starts", "up")
    assert classify_trajectory(np.stack([t, t], axis=1))[0] == "other"  # diagonal is not in the vocabulary
    assert classify_trajectory(np.stack([np.minimum(t, 6) * 2, np.full(8, 1.0)], axis=1))[0] == "other"  # 1 still step

    video = render_video(11, frames=8, size=64)
    for obj in video.objects:
        assert classify_trajectory(obj.centers)[0] == obj.motion
        for predicate in ("still", "moving", "left", "right", "up", "down", "bounce", "starts", "stops"):
            assert motion_truth(obj, predicate) == _holds(obj, predicate), (obj, predicate)
    with pytest.raises(ValueError, match="predicate"):
        motion_truth(video.objects[0], "jumping")


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        render_video(0, frames=3, size=64)
    with pytest.raises(ValueError, match="size"):
        render_video(0, frames=8, size=40)
    with pytest.raises(ValueError, match="videos"):
        generate_split(tmp_path, split="train", videos=0, frames=8, size=64, seed=0)
    with pytest.raises(ValueError, match="split"):
        generate_split(tmp_path, split="../train", videos=1, frames=8, size=64, seed=0)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- writing

def test_an_interrupted_split_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from ssa_rvos.data import synthref

    real = synthref.render_video
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthref, "render_video", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_split(tmp_path, split="train", videos=5, frames=6, size=48, seed=0)
    assert list(tmp_path.iterdir()) == []  # no split, no temporary folder
    monkeypatch.setattr(synthref, "render_video", real)

    generate_split(tmp_path, split="train", videos=2, frames=6, size=48, seed=0)
    generate_split(tmp_path, split="train", videos=3, frames=7, size=48, seed=1)  # replaces its own output
    ds = MeViS(tmp_path, "train")
    assert len(ds.videos()) == 3 and len(ds.video_frames(ds.videos()[0])) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]

    foreign = tmp_path / "valid_u"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="not a SynthRef split"):
        generate_split(tmp_path, split="valid_u", videos=1, frames=6, size=48, seed=0)
    assert (foreign / "notes.txt").read_text() == "not ours"


def test_demo_video_round_trip(tmp_path):
    path = tmp_path / "demo.mp4"
    exps = write_demo_video(path, seed=2, frames=10, size=(49, 64), fps=8)
    video = render_video(2, frames=10, size=(49, 64))
    assert exps == {str(k): e for k, e in enumerate(video.expressions)} and exps
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 10
    assert decoded[0].shape == (50, 64, 3)  # odd height padded to even for yuv420p
    assert np.abs(decoded[0][:49].astype(int) - video.frames[0]).mean() < 12
    assert [p.name for p in tmp_path.iterdir()] == ["demo.mp4"]


def test_synth_command_writes_readable_splits(tmp_path, capsys):
    from ssa_rvos.cli import main
    from ssa_rvos.data import MeViS

    out = tmp_path / "synthref"
    assert main(["synth", "--out", str(out), "--videos", "4", "--frames", "6", "--size", "48", "--seed", "3",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train: 4 videos" in printed and "valid_u: 1 videos" in printed
    assert len(MeViS(out, "train").videos()) == 4 and len(MeViS(out, "valid_u").videos()) == 1
    assert not json.loads((out / "train" / "synthref.json").read_text())["referring_captions"]
    assert main(["synth", "--out", str(out), "--videos", "4", "--frames", "6", "--size", "48", "--seed", "3",
                 "--referring-captions", "--splits", "train", "--quiet"]) == 0
    assert json.loads((out / "train" / "synthref.json").read_text())["referring_captions"]
    first = json.loads((out / "train" / "captions.json").read_text())["train_00000"]["00000"]
    assert any(line.startswith("the ") for line in first)
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "file"), "--videos", "2"]) == 2
    assert main(["synth", "--out", str(out), "--frames", "0"]) == 2
    err = capsys.readouterr().err
    assert "--frames must be a positive integer" in err and "Traceback" not in err
