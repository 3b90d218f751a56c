"""SynthRef: a procedural motion-referring benchmark written in the MeViS layout.

Every video shows 2-5 flat-coloured shapes (:data:`SHAPES` x :data:`COLOURS` x :data:`SIZES`) over a
dark, desaturated texture (:data:`BACKGROUNDS`), each following one motion of :data:`MOTIONS`. Objects
overlap in a random z-order (a mask is the *visible* part of its object) and may leave the frame (a frame
where an object is entirely outside, or entirely hidden, has a ``null`` mask). In a good share of the
videos two objects look exactly alike and differ only in how they move, so only the motion tells them
apart; the ``motion`` expressions refer to those.

Expressions come in :data:`KINDS`, each written with several templates, and each one is checked against
the generated objects before it is kept: it must be true of exactly its target set (see
:func:`motion_truth` for the three-valued motion vocabulary that makes this checkable). Layout of a split
(read by :class:`ssa_rvos.data.MeViS` for ``train`` / ``valid_u``)::

    <out>/<split>/JPEGImages/<video>/<00000..>.jpg
    <out>/<split>/meta_expressions.json   {"videos": {video: {"frames": [...], "expressions":
                                             {exp_id: {"exp", "obj_id": [int], "anno_id": [int], "kind"}}}}}
    <out>/<split>/mask_dict.json          {str(anno_id): [COCO RLE or null, one per frame]}
    <out>/<split>/captions.json           {video: {frame: [caption, ...]}}  (what one frame shows; no motion)
    <out>/<split>/synthref.json           generation parameters and statistics

A split is written to a hidden temporary folder and renamed into place when complete, so an
interrupted run never leaves a split that looks finished. Output is a pure function of
(seed, split, videos, frames, size, referring_captions) for given numpy / Pillow (libjpeg) versions;
the referring captions change captions.json only.
"""

from __future__ import annotations

import itertools
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_dir
from .masks import rle_encode, write_json_atomic

__all__ = [
    "expression_kinds",
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "KINDS",
    "MOTIONS",
    "MOTION_PREDICATES",
    "SHAPES",
    "SIZES",
    "VERSION",
    "SynthObject",
    "SynthVideo",
    "classify_trajectory",
    "generate",
    "generate_split",
    "motion_truth",
    "render_video",
    "video_name",
    "video_rng",
    "write_demo_video",
]

VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Saturated or bright colours far apart in RGB; backgrounds stay dark and grey, so none can hide an object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 190, 60),
    "blue": (45, 90, 245),
    "yellow": (245, 220, 35),
    "white": (245, 245, 245),
}
# Radius of the shape's reference circle as a fraction of min(H, W): "big" has ~3x the area of "small".
SIZES: dict[str, float] = {"small": 0.085, "big": 0.145}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# still; constant-velocity motion in one of DIRECTIONS; bounce = back and forth along one axis, reversing
# once at the frame edge; starts = still, then moves; stops = moves, then still.
MOTIONS: tuple[str, ...] = ("still", *DIRECTIONS, "bounce", "starts", "stops")
# What an expression may say about motion; motion_truth() gives each object's True / False / undecided.
MOTION_PREDICATES: tuple[str, ...] = ("still", "moving", *DIRECTIONS, "bounce", "starts", "stops")
KINDS: tuple[str, ...] = ("appearance", "motion", "appearance_motion", "temporal", "multi")
BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "checker", "gradient", "plain")

MIN_FRAMES = 6  # starts / stops need >= 2 still and >= 2 moving steps
MIN_SIZE = 48
MIN_RADIUS = 5.0

_ATTRS = ("size", "colour", "shape")
# Half-extent of each shape (centre to farthest point) in units of the reference radius; bounces and
# "inside the frame" placements use it.
_EXTENT = {"circle": 1.0, "square": 0.88, "triangle": 1.3, "star": 1.35}
_TEMPORAL = ("starts", "stops")
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
_BACKGROUND_WORDS = {"noise": "a mottled background", "stripes": "a striped background",
                     "checker": "a checkered background", "gradient": "a gradient background",
                     "plain": "a plain background"}

# Singular templates: "{np}" is a noun phrase ("circle", "red one", "big blue square"), "{adj}{noun}" the same
# split so that a participle sits after the adjectives ("the big red bouncing circle").
_APPEARANCE_TEMPLATES = ("the {np}", "the only {np}", "the {np} in the video", "the {np} you can see")
_SINGULAR = {
    "still": ("the {np} that is not moving", "the {np} standing still", "the {adj}motionless {noun}",
              "the {np} that does not move", "the {np} that stays in place"),
    "moving": ("the {adj}moving {noun}", "the {np} that is moving", "the {np} in motion"),
    "left": ("the {np} moving left", "the {np} moving to the left", "the {np} that moves left",
             "the {np} going to the left"),
    "right": ("the {np} moving right", "the {np} moving to the right", "the {np} that moves right",
              "the {np} going to the right"),
    "up": ("the {np} moving up", "the {np} moving upwards", "the {np} that moves up", "the {np} going up"),
    "down": ("the {np} moving down", "the {np} moving downwards", "the {np} that moves down",
             "the {np} going down"),
    "bounce": ("the {adj}bouncing {noun}", "the {np} that bounces off the edge", "the {np} moving back and forth",
               "the {np} that bounces back"),
    "starts": ("the {np} that starts moving", "the {np} that begins to move",
               "the {np} that is still at first and then moves", "the {np} that starts moving halfway"),
    "stops": ("the {np} that stops moving", "the {np} that comes to a stop", "the {np} that moves and then stops",
              "the {np} that stops halfway"),
}
# Plural templates: "{det}" is "the" / "all the" / "the two" / "both"; "{np}" a plural noun phrase.
_PLURAL_TEMPLATES = {
    None: ("{det} {np}",),
    "still": ("{det} {np} that are not moving", "{det} {np} standing still", "{det} {adj}motionless {noun}",
              "{det} {np} that do not move"),
    "moving": ("{det} {adj}moving {noun}", "{det} {np} that are moving", "{det} {np} in motion"),
    "left": ("{det} {np} moving left", "{det} {np} moving to the left", "{det} {np} that move left"),
    "right": ("{det} {np} moving right", "{det} {np} moving to the right", "{det} {np} that move right"),
    "up": ("{det} {np} moving up", "{det} {np} moving upwards", "{det} {np} that move up"),
    "down": ("{det} {np} moving down", "{det} {np} moving downwards", "{det} {np} that move down"),
    "bounce": ("{det} {adj}bouncing {noun}", "{det} {np} bouncing back and forth", "{det} {np} that bounce off the edges"),
    "starts": ("{det} {np} that start moving", "{det} {np} that begin to move"),
    "stops": ("{det} {np} that stop moving", "{det} {np} that come to a stop"),
}
_CAPTION_TEMPLATES = ("{objs} on {bg}", "{bg} with {objs}", "a picture of {objs} on {bg}")
# Expressions kept per video and kind; motion-only ones get one per twin so that a model must tell them apart.
_QUOTA = {"appearance": 2, "motion": 4, "appearance_motion": 2, "temporal": 2, "multi": 2}


# ------------------------------------------------------------------------------------------------ types

@dataclass(frozen=True, eq=False)
class SynthObject:
    """One object of a SynthRef video.

    ``centers`` (T, 2) float are (x, y) in pixels (x right, y down; pixel (i, j) covers
    [j, j + 1) x [i, i + 1)); ``masks`` (T, H, W) bool are the visible pixels in each frame (occlusion by
    objects with a higher ``z`` and the frame border removed). ``direction`` is the direction of travel
    for the linear motions and of the moving part of starts / stops (for bounce: the first leg's);
    ``axis`` is "x" or "y" for moving objects; ``switch`` is, for starts / stops, the first step
    (frame t -> t + 1) of the second regime. ``area`` is the pixel count of the whole, unoccluded shape.
    """

    obj_id: int
    shape: str
    colour: str
    size: str
    rgb: tuple[int, int, int]
    motion: str
    direction: str | None
    axis: str | None
    switch: int | None
    radius: float
    z: int
    area: int
    centers: np.ndarray = field(repr=False)
    masks: np.ndarray = field(repr=False)

    @property
    def appearance(self) -> tuple[str, str, str]:
        """(size, colour, shape): two objects with equal appearance are drawn identically."""
        return (self.size, self.colour, self.shape)

    @property
    def description(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    @property
    def extent(self) -> float:
        """Distance in pixels from the centre to the farthest point of the shape."""
        return _EXTENT[self.shape] * self.radius


@dataclass(frozen=True, eq=False)
class SynthVideo:
    """A rendered video: unpacks as ``frames, objects, expressions = render_video(...)``.

    ``frames`` (T, H, W, 3) uint8 RGB (before JPEG); ``objects`` one :class:`SynthObject` per obj_id;
    ``expressions`` dicts ``{"exp": str, "obj_id": [int], "kind": str}``; ``captions`` one list of
    sentences per frame; ``background`` the texture kind (:data:`BACKGROUNDS`).
    """

    frames: np.ndarray
    objects: list[SynthObject]
    expressions: list[dict]
    captions: list[list[str]]
    background: str

    def __iter__(self):
        return iter((self.frames, self.objects, self.expressions))

    @property
    def masks(self) -> np.ndarray:
        """(N, T, H, W) bool, the visible masks of every object."""
        return np.stack([o.masks for o in self.objects])


@dataclass(frozen=True)
class _Spec:
    """An object before placement: appearance and motion only (enough to write the expressions)."""

    shape: str
    colour: str
    size: str
    motion: str
    direction: str | None
    axis: str | None

    @property
    def appearance(self) -> tuple[str, str, str]:
        return (self.size, self.colour, self.shape)


# ----------------------------------------------------------------------------------------- motion logic

def motion_truth(obj: SynthObject | _Spec, predicate: str) -> bool | None:
    """Whether a motion predicate holds for an object: True, False, or None (a word that fits in part).

    ``still`` and ``moving`` hold over the whole clip (so a starting or stopping object is neither: None);
    a direction holds for constant motion that way (None for a bounce along that axis or a start / stop
    that way, since those move that way only part of the time); ``bounce``, ``starts``, ``stops`` hold
    exactly for their motion. An expression is only written when every object it could be read as
    naming gets True or False, so no sentence is half-true of a distractor.
    """
    if predicate not in MOTION_PREDICATES:
        raise ValueError(f"unknown motion predicate {predicate!r} (expected one of {', '.join(MOTION_PREDICATES)})")
    m = obj.motion
    if m == "still":
        return predicate == "still"
    if m in DIRECTIONS:
        return predicate in ("moving", m)
    if m == "bounce":
        if predicate in ("moving", "bounce"):
            return True
        along = ("left", "right") if obj.axis == "x" else ("up", "down")
        return None if predicate in along else False
    # starts / stops
    if predicate == m:
        return True
    if predicate in ("still", "moving", obj.direction):
        return None
    return False


def classify_trajectory(centers: np.ndarray, *, eps: float = 0.05) -> tuple[str, str | None]:
    """Name the motion of a (T, 2) track of (x, y) centres: (motion, direction or axis).

    A step moves when a coordinate changes by more than ``eps`` px. ``still``: no step moves. A
    direction: every step moves, along one axis, the same way. ``bounce``: every step moves along one
    axis and the sign flips exactly once (returns the axis). ``stops`` / ``starts``: the moving steps
    are a prefix / suffix of >= 2 steps with >= 2 still steps after / before, along one axis one way
    (returns the direction). Anything else is ``("other", None)``. The generator checks every track it
    makes with this, so the motion labels are those of the trajectories.
    """
    centers = np.asarray(centers, dtype=np.float64)
    d = np.diff(centers, axis=0)  # (T-1, 2)
    moving = np.abs(d).max(axis=1) > eps
    if not moving.any():
        return ("still", None)
    moved = d[moving]
    axes = np.abs(moved) > eps
    if axes[:, 0].any() and axes[:, 1].any():
        return ("other", None)
    ax = 0 if axes[:, 0].any() else 1
    signs = np.sign(moved[:, ax])
    direction = {(0, 1): "right", (0, -1): "left", (1, 1): "down", (1, -1): "up"}

    def one_way() -> str | None:
        return direction[(ax, int(signs[0]))] if (signs == signs[0]).all() else None

    n = len(moving)
    k = int(moving.sum())
    if k == n:
        if one_way() is not None:
            return (one_way(), None)
        flips = int((signs[1:] != signs[:-1]).sum())
        return ("bounce", "xy"[ax]) if flips == 1 else ("other", None)
    if moving[:k].all() and k >= 2 and n - k >= 2 and one_way() is not None:
        return ("stops", one_way())
    if moving[n - k:].all() and k >= 2 and n - k >= 2 and one_way() is not None:
        return ("starts", one_way())
    return ("other", None)


# ---------------------------------------------------------------------------------------------- seeding

def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of video ``index`` of a split: each video depends only on (seed, split, index)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _split_key(split), int(index)]))


def video_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if min(h, w) < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {h}x{w}")
    return h, w


def _check_frames(frames: int) -> int:
    if int(frames) < MIN_FRAMES:
        raise ValueError(f"frames must be at least {MIN_FRAMES} (starts / stops need 2 still and 2 moving steps), "
                         f"got {frames}")
    return int(frames)


# ------------------------------------------------------------------------------------------- rendering

def _background(rng: np.random.Generator, h: int, w: int) -> tuple[str, np.ndarray]:
    """A dark, desaturated texture -> (kind, (H, W, 3) uint8); channels stay within 0..~180 and within ~40
    of each other, so no saturated or white object can blend into it."""
    kind = str(rng.choice(BACKGROUNDS))
    level = rng.uniform(30, 130)
    a = level + rng.uniform(-15, 15, 3)
    b = np.clip(level + rng.choice([-1, 1]) * rng.uniform(25, 50), 20, 160) + rng.uniform(-15, 15, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    theta = rng.uniform(0, math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    s = min(h, w)
    if kind == "plain":
        weight = np.zeros((h, w))
    elif kind == "gradient":
        weight = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
    elif kind == "stripes":
        wave = np.sin(2 * math.pi * proj / rng.uniform(0.08, 0.25) / s + rng.uniform(0, 2 * math.pi))
        weight = (wave > 0).astype(np.float64) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    elif kind == "checker":
        cell = rng.uniform(0.07, 0.2) * s
        ox, oy = rng.uniform(0, cell, 2)
        weight = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2).astype(np.float64)
    else:  # noise: smooth value noise, two octaves, upsampled bilinearly
        weight = np.zeros((h, w))
        for cells, amp in ((int(rng.integers(3, 6)), 0.7), (int(rng.integers(8, 14)), 0.3)):
            coarse = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
            weight += amp * np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    img = a * (1 - weight[..., None]) + b * weight[..., None] + rng.normal(0, 3, (h, w, 3))
    return kind, np.clip(img, 0, 255).astype(np.uint8)


def _polygon(shape: str, r: float) -> np.ndarray:
    """Vertices (V, 2) of a polygon shape around the origin (y down, pointing up)."""
    if shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        radii = np.full(3, _EXTENT["triangle"] * r)
    else:  # star: 5 outer points, inner radius half the outer one
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.5) * _EXTENT["star"] * r
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _in_polygon(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points: x (1, W), y (H, 1) -> (H, W) bool."""
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0)):
        if y0 == y1:
            continue  # a horizontal edge is never crossed by a horizontal ray
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _shape_mask(shape: str, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    """The whole shape centred at (cx, cy), clipped to the frame -> (H, W) bool; only its box is evaluated."""
    out = np.zeros((h, w), dtype=bool)
    e = _EXTENT[shape] * r
    x0, x1 = max(0, math.floor(cx - e)), min(w, math.ceil(cx + e) + 1)
    y0, y1 = max(0, math.floor(cy - e)), min(h, math.ceil(cy + e) + 1)
    if x0 >= x1 or y0 >= y1:
        return out
    x = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    y = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    if shape == "circle":
        m = x * x + y * y <= r * r
    elif shape == "square":
        a = _EXTENT["square"] * r
        m = (np.abs(x) <= a) & (np.abs(y) <= a)
    else:
        m = _in_polygon(x, y, _polygon(shape, r))
    out[y0:y1, x0:x1] = m
    return out


def _track(rng: np.random.Generator, spec: _Spec, *, extent: float, h: int, w: int, t: int) -> tuple[np.ndarray, int | None]:
    """Centres (T, 2) of one object's motion, and the switch step of starts / stops.

    Linear tracks travel 35-60 % of the frame with their midpoint inside it (so their ends may leave
    it); starts / stops travel 25-45 % and rest fully inside the frame; bounces stay inside and reverse
    at the edge on an integer frame 30-70 % of the way, so every step moves.
    """
    steps = t - 1
    pos = np.zeros((t, 2))
    if spec.motion == "still":
        pos[:] = [rng.uniform(extent, w - extent), rng.uniform(extent, h - extent)]
        return pos, None
    ax = 0 if spec.axis == "x" else 1
    length, cross = (w, h) if ax == 0 else (h, w)
    pos[:, 1 - ax] = rng.uniform(extent, cross - extent)
    sign = 1.0 if spec.direction in ("right", "down") else -1.0
    tt = np.arange(t, dtype=np.float64)
    switch = None
    if spec.motion in DIRECTIONS:
        travel = rng.uniform(0.35, 0.6) * length
        mid = rng.uniform(extent, length - extent)
        pos[:, ax] = mid + sign * travel * (tt / steps - 0.5)
    elif spec.motion == "bounce":
        room = length - 2 * extent
        speed = rng.uniform(0.6, 0.95) * room / steps
        lo, hi = max(2, round(0.3 * steps)), min(steps - 2, round(0.7 * steps))
        turn = int(rng.integers(lo, hi + 1))
        edge = length - extent if sign > 0 else extent
        p = edge - sign * speed * np.abs(turn - tt)  # reaches the edge at frame `turn`, then comes back
        pos[:, ax] = p
    else:
        lo, hi = max(2, round(steps / 3)), min(steps - 2, round(2 * steps / 3))
        switch = int(rng.integers(lo, hi + 1))
        travel = rng.uniform(0.25, 0.45) * length
        rest = rng.uniform(extent, length - extent)
        if spec.motion == "stops":  # moves on steps < switch, rests at `rest` from frame `switch` on
            frac = np.minimum(tt, switch) / switch
            pos[:, ax] = rest - sign * travel * (1 - frac)
        else:  # starts: rests until frame `switch`, then moves
            frac = np.maximum(tt - switch, 0) / (steps - switch)
            pos[:, ax] = rest + sign * travel * frac
    return pos, switch


def _sample_specs(rng: np.random.Generator) -> list[_Spec]:
    """Appearance and motion of 2-5 objects: 0, 1 or 2 pairs of identical twins (which differ in motion;
    60 % of the videos have one), sometimes a near-twin (same colour and shape, other size); every other
    appearance occurs once."""
    n = int(rng.integers(2, 6))
    every = list(itertools.product(SIZES, COLOURS, SHAPES))
    appearances: list[tuple[str, str, str]] = []
    twins = 0
    if rng.random() < 0.6:
        twins = 2 if n >= 4 and rng.random() < 0.2 else 1
    for _ in range(twins):
        app = every[int(rng.integers(len(every)))]
        while app in appearances:
            app = every[int(rng.integers(len(every)))]
        appearances += [app, app]
    while len(appearances) < n:
        if appearances and rng.random() < 0.3:  # near-twin: only the size (or the motion) tells them apart
            size, colour, shape = appearances[int(rng.integers(len(appearances)))]
            app = ("big" if size == "small" else "small", colour, shape)
        else:
            app = every[int(rng.integers(len(every)))]
        if app not in appearances:
            appearances.append(app)
    motions = _sample_motions(rng, n, twin_pairs=[(2 * i, 2 * i + 1) for i in range(twins)])
    order = rng.permutation(n)  # obj_ids carry no hint of who is a twin
    specs = []
    for i in order:
        size, colour, shape = appearances[i]
        motion, direction, axis = motions[i]
        specs.append(_Spec(shape=shape, colour=colour, size=size, motion=motion, direction=direction, axis=axis))
    return specs


def _sample_motions(rng: np.random.Generator, n: int, *, twin_pairs: list[tuple[int, int]]) -> list[tuple]:
    weights = {"still": 0.2, "left": 0.1, "right": 0.1, "up": 0.1, "down": 0.1, "bounce": 0.14, "starts": 0.13,
               "stops": 0.13}
    names, p = list(weights), np.array(list(weights.values()))
    drawn = [str(rng.choice(names, p=p / p.sum())) for _ in range(n)]
    for a, b in twin_pairs:  # twins: two different non-temporal motions, so a motion-only sentence can separate them
        if rng.random() < 0.85:
            pool = ["still", *DIRECTIONS, "bounce"]
            first = str(rng.choice(pool))
            second = str(rng.choice([m for m in pool if m != first]))
            drawn[a], drawn[b] = first, second
    out = []
    for m in drawn:
        if m == "still":
            out.append((m, None, None))
        elif m in DIRECTIONS:
            out.append((m, m, "x" if m in ("left", "right") else "y"))
        else:
            axis = str(rng.choice(["x", "y"]))
            direction = str(rng.choice(["left", "right"] if axis == "x" else ["up", "down"]))
            out.append((m, direction, axis))
    return out


def _radius(size: str, h: int, w: int) -> float:
    """Reference radius in pixels; at least 5 px for "small" (and as much more for "big"), below which a star
    and a triangle rasterise to the same blob."""
    return max(SIZES[size] * min(h, w), MIN_RADIUS * SIZES[size] / SIZES["small"])


def _place(rng: np.random.Generator, specs: list[_Spec], *, h: int, w: int, t: int):
    """Tracks, z-order and masks for the specs; None when an object is hidden too much (occlusion above 50 %
    of its in-frame part, or under 60 % of its area visible in more than half of the frames)."""
    n = len(specs)
    z = rng.permutation(n)
    radii = [_radius(s.size, h, w) for s in specs]
    tracks = []
    for spec, r in zip(specs, radii):
        centers, switch = _track(rng, spec, extent=_EXTENT[spec.shape] * r, h=h, w=w, t=t)
        named = classify_trajectory(centers)
        detail = {"bounce": spec.axis, "starts": spec.direction, "stops": spec.direction}.get(spec.motion)
        expected = (spec.motion, detail)
        if named != expected:  # a construction bug, never a random event
            raise RuntimeError(f"SynthRef track for {spec.motion} {spec.direction} reads as {named}")
        tracks.append((centers, switch))
    full = np.zeros((n, t, h, w), dtype=bool)
    for i, (spec, r) in enumerate(zip(specs, radii)):
        for k in range(t):
            full[i, k] = _shape_mask(spec.shape, tracks[i][0][k, 0], tracks[i][0][k, 1], r, h, w)
    visible = full.copy()
    cover = np.zeros((t, h, w), dtype=bool)
    for i in np.argsort(-z):  # top first: each object loses what the ones above it cover
        visible[i] &= ~cover
        cover |= full[i]
    areas = [int(_shape_mask(s.shape, w / 2, h / 2, r, h, w).sum()) for s, r in zip(specs, radii)]
    in_frame = full.sum(axis=(2, 3))
    shown = visible.sum(axis=(2, 3))
    for i in range(n):
        big_enough = in_frame[i] >= 0.3 * areas[i]
        if (shown[i][big_enough] < 0.5 * in_frame[i][big_enough]).any():
            return None
        if (shown[i] >= 0.6 * areas[i]).sum() * 2 < t:
            return None
    return z, radii, tracks, visible, areas


# ------------------------------------------------------------------------------------------ expressions

@dataclass(frozen=True)
class _Desc:
    """A checked description: kind, targets, the appearance words it uses and the motion predicate."""

    kind: str
    targets: tuple[int, ...]
    attrs: tuple[tuple[str, str], ...]
    predicate: str | None
    candidates: int  # objects that match the appearance words (> 1: the motion words are needed)


def _describe(specs: list[_Spec]) -> list[_Desc]:
    """Every true, unambiguous description of the video (see the module docstring and motion_truth)."""
    n = len(specs)
    counts = Counter(s.appearance for s in specs)
    subsets = [c for k in range(4) for c in itertools.combinations(_ATTRS, k)]
    out: list[_Desc] = []

    def matching(attrs: tuple[tuple[str, str], ...]) -> list[int]:
        return [i for i, s in enumerate(specs) if all(getattr(s, a) == v for a, v in attrs)]

    def selected(cands: list[int], predicate: str) -> list[int] | None:
        truth = [motion_truth(specs[i], predicate) for i in cands]
        if any(v is None for v in truth):
            return None  # some object the words could mean is neither clearly in nor out
        return [i for i, v in zip(cands, truth) if v]

    for o, spec in enumerate(specs):
        twin = counts[spec.appearance] > 1
        for subset in subsets:
            attrs = tuple((a, getattr(spec, a)) for a in subset)
            cands = matching(attrs)
            if subset and cands == [o]:
                out.append(_Desc("appearance", (o,), attrs, None, 1))
            for predicate in MOTION_PREDICATES:
                if selected(cands, predicate) != [o]:
                    continue
                if predicate in _TEMPORAL:
                    kind = "temporal"
                elif set(subset) <= {"shape"}:
                    if not twin and not subset:
                        continue  # "the one moving left" about a unique-looking object: no kind for it
                    kind = "motion" if twin else "appearance_motion"
                else:
                    kind = "appearance_motion"
                out.append(_Desc(kind, (o,), attrs, predicate, len(cands)))
    seen: set[tuple] = set()
    for subset in subsets:
        for spec in specs:
            attrs = tuple((a, getattr(spec, a)) for a in subset)
            if attrs in seen:
                continue
            seen.add(attrs)
            cands = matching(attrs)
            for predicate in (None, *MOTION_PREDICATES):
                if predicate is None:
                    targets = cands if subset else None
                else:
                    targets = selected(cands, predicate)
                if targets is not None and 2 <= len(targets) < n:
                    out.append(_Desc("multi", tuple(targets), attrs, predicate, len(cands)))
    return out


def _noun_phrase(rng: np.random.Generator, attrs: dict, *, plural: bool) -> dict[str, str]:
    """Template fields: ``adj`` ("big red " or ""), ``noun`` ("circle", "one", "shapes"), ``np`` both."""
    adj = "".join(f"{attrs[a]} " for a in ("size", "colour") if a in attrs)
    if "shape" in attrs:
        noun = _PLURAL[attrs["shape"]] if plural else attrs["shape"]
    elif plural:
        noun = str(rng.choice(["objects", "shapes"]))
    else:
        noun = str(rng.choice(["object", "one", "shape"]))
    return {"adj": adj, "noun": noun, "np": adj + noun}


def _text(rng: np.random.Generator, desc: _Desc) -> str:
    attrs = dict(desc.attrs)
    if desc.kind == "multi":
        fields = _noun_phrase(rng, attrs, plural=True)
        dets = ["the", "all the", f"the {_NUMBERS[len(desc.targets)]}"] + (["both"] if len(desc.targets) == 2 else [])
        template = str(rng.choice(_PLURAL_TEMPLATES[desc.predicate]))
        return template.format(det=str(rng.choice(dets)), **fields)
    fields = _noun_phrase(rng, attrs, plural=False)
    templates = _APPEARANCE_TEMPLATES if desc.predicate is None else _SINGULAR[desc.predicate]
    return str(rng.choice(templates)).format(**fields)


def _select(rng: np.random.Generator, descs: list[_Desc], specs: list[_Spec]) -> list[dict]:
    """Pick the video's expressions: per kind up to its quota, distinct targets first, motion-only ones
    one per twin, appearance + motion ones preferring descriptions whose motion words are needed."""
    chosen: list[dict] = []
    texts: set[str] = set()
    for kind in KINDS:
        pool = [d for d in descs if d.kind == kind]
        if not pool:
            continue
        keys = rng.random(len(pool))
        if kind == "appearance_motion":
            keys = keys + np.array([d.candidates > 1 for d in pool])  # informative ones first
        ranked = [pool[i] for i in np.argsort(-keys, kind="stable")]
        taken: set[tuple[int, ...]] = set()
        for desc in ranked:
            if len(taken) >= _QUOTA[kind] or desc.targets in taken:
                continue
            text = _text(rng, desc)
            if text in texts:
                continue
            texts.add(text)
            taken.add(desc.targets)
            chosen.append({"exp": text, "obj_id": list(desc.targets), "kind": kind})
    return chosen


def _captions(rng: np.random.Generator, objects: list[SynthObject], background: str, t: int) -> list[str]:
    """Sentences about frame ``t``: the scene (identical objects counted, left to right), then each visible
    object alone. An object is named when at least 30 % of its area shows; motion cannot be seen in
    one frame, so it is never named."""
    shown = [o for o in objects if o.masks[t].sum() >= 0.3 * o.area]
    bg = _BACKGROUND_WORDS[background]
    if not shown:
        return [f"{bg} with no objects"]
    groups: dict[tuple[str, str, str], list[SynthObject]] = {}
    for o in sorted(shown, key=lambda o: (float(np.nonzero(o.masks[t])[1].mean()), o.obj_id)):
        groups.setdefault(o.appearance, []).append(o)
    phrases = []
    for (size, colour, shape), members in groups.items():
        if len(members) == 1:
            phrases.append(f"a {size} {colour} {shape}")
        else:
            phrases.append(f"{_NUMBERS[len(members)]} {size} {colour} {_PLURAL[shape]}")
    objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    scene = str(rng.choice(_CAPTION_TEMPLATES)).format(objs=objs, bg=bg)
    singles = [f"a {size} {colour} {shape}" for size, colour, shape in groups]
    return [scene, *singles]


def _referring_captions(objects: list[SynthObject], t: int, h: int, w: int) -> list[str]:
    """Referring-style phrases about frame ``t``, four per shown object (the same 30 % rule as
    :func:`_captions`), in obj_id order, each once: "the {colour} {shape}", "the {size} {shape}",
    "the {colour} {shape} on the left / on the right" and "... at the top / at the bottom", the side
    from the mean column / row index of its visible pixels against w / 2 / h / 2. They may fit several
    objects: they teach the CLIP the words a referring sentence uses, not which object is meant."""
    out: list[str] = []
    for o in objects:
        if o.masks[t].sum() < 0.3 * o.area:
            continue
        ys, xs = np.nonzero(o.masks[t])
        side = "left" if xs.mean() < w / 2 else "right"
        level = "top" if ys.mean() < h / 2 else "bottom"
        for phrase in (f"the {o.colour} {o.shape}", f"the {o.size} {o.shape}",
                       f"the {o.colour} {o.shape} on the {side}", f"the {o.colour} {o.shape} at the {level}"):
            if phrase not in out:
                out.append(phrase)
    return out


# --------------------------------------------------------------------------------------------- a video

def render_video(rng: np.random.Generator | int, *, frames: int, size: int | tuple[int, int],
                 referring_captions: bool = False) -> SynthVideo:
    """Draw one SynthRef video in memory.

    ``rng`` is a numpy Generator (consumed) or an int seed; ``size`` is S (S x S frames) or (H, W).
    Returns a :class:`SynthVideo` (unpacks as ``frames, objects, expressions``): frames (T, H, W, 3) uint8,
    objects with masks (T, H, W) bool each (``.masks`` stacks them to (N, T, H, W)), expressions
    ``{"exp", "obj_id", "kind"}``, and per-frame captions. Layouts whose objects are hidden too much, or
    whose twins cannot be told apart by a motion-only sentence, are redrawn. ``referring_captions`` adds
    :func:`_referring_captions` to each frame's captions (they draw no random numbers, so pixels,
    expressions and the other captions are the same either way).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(int(rng))
    t = _check_frames(frames)
    h, w = _hw(size)
    # Words are drawn from their own stream, so editing templates never changes the pixels.
    text_rng = np.random.default_rng(int(rng.integers(2**63)))
    for _ in range(1000):
        specs = _sample_specs(rng)
        descs = _describe(specs)
        counts = Counter(s.appearance for s in specs)
        separable = [i for i, s in enumerate(specs) if counts[s.appearance] > 1 and s.motion not in _TEMPORAL]
        if separable and not any(d.kind == "motion" for d in descs):
            continue  # the twins' motions cannot be worded without half-true words: redraw the motions
        placed = None
        for _ in range(30):
            placed = _place(rng, specs, h=h, w=w, t=t)
            if placed is not None:
                break
        if placed is None:
            continue
        break
    else:  # pragma: no cover - only a degenerate size could get here
        raise RuntimeError(f"could not lay out a SynthRef video of {h}x{w}")
    z, radii, tracks, visible, areas = placed
    kind, bg = _background(rng, h, w)
    jitter = {c: tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-10, 11, 3), 0, 255))
              for c, rgb in COLOURS.items()}  # per video and colour, so twins stay identical
    out = np.broadcast_to(bg, (t, h, w, 3)).copy()
    objects = []
    for i, spec in enumerate(specs):
        out[visible[i]] = jitter[spec.colour]
        objects.append(SynthObject(
            obj_id=i, shape=spec.shape, colour=spec.colour, size=spec.size, rgb=jitter[spec.colour],
            motion=spec.motion, direction=spec.direction, axis=spec.axis, switch=tracks[i][1], radius=radii[i],
            z=int(z[i]), area=areas[i], centers=tracks[i][0], masks=visible[i]))
    expressions = _select(text_rng, descs, specs)
    captions = [_captions(text_rng, objects, kind, k) for k in range(t)]
    if referring_captions:
        captions = [[*c, *(p for p in _referring_captions(objects, k, h, w) if p not in c)]
                    for k, c in enumerate(captions)]
    return SynthVideo(frames=out, objects=objects, expressions=expressions, captions=captions, background=kind)


# ------------------------------------------------------------------------------------------------ files

def _check_split_name(split: str) -> None:
    if not split or split.startswith(".") or "/" in split or os.sep in split:
        raise ValueError(f"a split is a plain folder name, got {split!r}")


def _check_replaceable(path: Path) -> None:
    """Only an earlier SynthRef split (or an empty folder) may be replaced: never delete anything else."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder; not replacing it with a SynthRef split")
    if (path / "synthref.json").is_file() or not any(path.iterdir()):
        return
    raise FileExistsError(f"{path}: exists and is not a SynthRef split (no synthref.json); not replacing it")


def _statistics(per_video: list[dict]) -> dict:
    kinds = Counter(k for v in per_video for k in v["kinds"])
    return {
        "expressions": sum(len(v["kinds"]) for v in per_video),
        "kinds": {k: kinds.get(k, 0) for k in KINDS},
        "objects_per_video": {str(n): c for n, c in sorted(Counter(v["objects"] for v in per_video).items())},
        "motions": {m: c for m, c in sorted(Counter(m for v in per_video for m in v["motions"]).items())},
        "backgrounds": {b: c for b, c in sorted(Counter(v["background"] for v in per_video).items())},
        "videos_with_twins": sum(v["twins"] for v in per_video),
        "videos_with_motion_expression": sum("motion" in v["kinds"] for v in per_video),
        "null_masks": sum(v["null_masks"] for v in per_video),
    }


def generate_split(out: str | os.PathLike, *, split: str, videos: int, frames: int, size: int | tuple[int, int],
                   seed: int, referring_captions: bool = False, progress: bool = False) -> dict:
    """Write one split ``<out>/<split>`` (layout in the module docstring) and return its ``synthref.json``.

    Video i is ``render_video(video_rng(seed, split, i), ...)`` named :func:`video_name`; anno_ids run
    over the split's objects in video order. Written to a hidden folder beside it and renamed into place
    when complete; an existing SynthRef split of that name is replaced, anything else is an error.
    ``referring_captions``: see :func:`render_video` (recorded in ``synthref.json``).
    """
    if videos < 1:
        raise ValueError(f"videos must be at least 1, got {videos}")
    _check_split_name(split)
    t = _check_frames(frames)
    h, w = _hw(size)
    out = Path(out)
    final = out / split
    _check_replaceable(final)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    with atomic_dir(final) as tmp:  # a finished split, or the one there before
        names = [f"{k:05d}" for k in range(t)]
        meta: dict = {}
        mask_dict: dict = {}
        captions: dict = {}
        per_video: list[dict] = []
        anno = 0
        for i in tqdm(range(videos), desc=f"synthref {split}", unit="video", disable=not progress):
            name = video_name(split, i)
            video = render_video(video_rng(seed, split, i), frames=t, size=(h, w),
                                 referring_captions=referring_captions)
            folder = tmp / "JPEGImages" / name
            folder.mkdir(parents=True)
            for frame, image in zip(names, video.frames):
                # 4:4:4 chroma: with 4:2:0 the edges of small saturated shapes bleed into the background
                Image.fromarray(image).save(folder / f"{frame}.jpg", format="JPEG", quality=95, subsampling=0)
            anno_ids = []
            nulls = 0
            for obj in video.objects:
                rles = [rle_encode(m) if m.any() else None for m in obj.masks]
                nulls += sum(r is None for r in rles)
                mask_dict[str(anno)] = rles
                anno_ids.append(anno)
                anno += 1
            exps = {str(k): {"exp": e["exp"], "obj_id": list(e["obj_id"]),
                             "anno_id": [anno_ids[o] for o in e["obj_id"]], "kind": e["kind"]}
                    for k, e in enumerate(video.expressions)}
            meta[name] = {"frames": names, "expressions": exps}
            captions[name] = dict(zip(names, video.captions))
            apps = Counter(o.appearance for o in video.objects)
            per_video.append({"kinds": [e["kind"] for e in video.expressions], "objects": len(video.objects),
                              "motions": [o.motion for o in video.objects], "background": video.background,
                              "twins": any(c > 1 for c in apps.values()), "null_masks": nulls})
        info = {"format": "synthref", "version": VERSION, "split": split, "seed": int(seed), "videos": int(videos),
                "frames": t, "size": [h, w], "referring_captions": bool(referring_captions),
                "statistics": _statistics(per_video)}
        # JSON last, the parameters file very last: a folder with synthref.json is a finished split.
        for file, obj in (("mask_dict.json", mask_dict), ("captions.json", captions),
                          ("meta_expressions.json", {"videos": meta}), ("synthref.json", info)):
            write_json_atomic(tmp / file, obj)
            (tmp / file).chmod(0o644)  # written through a private temporary file
        _check_replaceable(final)  # again: something may have appeared there while we worked
    return info


def generate(out: str | os.PathLike, *, videos: int, frames: int, size: int | tuple[int, int], seed: int,
             splits: tuple[str, ...] = ("train", "valid_u"), valid_videos: int | None = None,
             referring_captions: bool = False, progress: bool = False) -> dict[str, dict]:
    """Write several splits of SynthRef under ``out``: ``train`` gets ``videos`` videos, every other split
    ``valid_videos`` (default: a quarter of ``videos``, at least 1). Returns ``{split: synthref.json}``."""
    if valid_videos is None:
        valid_videos = max(1, videos // 4)
    # Everything is checked before the first split is written: a bad request replaces nothing.
    for name, count in (("videos", videos), ("valid_videos", valid_videos)):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    _check_frames(frames)
    _hw(size)
    if len(set(splits)) != len(splits):
        raise ValueError(f"a split is named twice in {list(splits)}")
    for split in splits:
        _check_split_name(split)
        _check_replaceable(Path(out) / split)
    return {split: generate_split(out, split=split, videos=videos if split == "train" else valid_videos,
                                  frames=frames, size=size, seed=seed,
                                  referring_captions=referring_captions, progress=progress)
            for split in splits}


def expression_kinds(root: str | os.PathLike, split: str) -> dict[tuple[str, str], str]:
    """``{(video, exp_id): kind}`` of a SynthRef split, from its meta_expressions.json."""
    from .expressions import DatasetError, read_json

    path = Path(root) / split / "meta_expressions.json"
    videos = read_json(path).get("videos", {})
    kinds = {}
    for video, entry in videos.items():
        for exp_id, e in entry.get("expressions", {}).items():
            if "kind" not in e:
                raise DatasetError(f"{path}: expression {video}/{exp_id} has no 'kind' (not a SynthRef split?)")
            kinds[(video, str(exp_id))] = e["kind"]
    return kinds


def write_demo_video(path: str | os.PathLike, *, seed: int, frames: int, size: int | tuple[int, int],
                     fps: int = 8) -> dict:
    """Render the video ``render_video(seed, ...)`` to an mp4 with :class:`ssa_rvos.videoio.VideoWriter`
    (H.264 if available, else MPEG-4 Part 2; yuv420p, so an odd height or width is padded by one edge
    pixel) and return its expressions ``{exp_id: {"exp", "obj_id", "kind"}}`` (obj_id as in
    :func:`render_video`)."""
    from ..videoio import VideoWriter

    video = render_video(int(seed), frames=frames, size=size)
    with VideoWriter(path, fps=fps) as writer:
        for image in video.frames:
            writer.write(image)
    return {str(k): {"exp": e["exp"], "obj_id": list(e["obj_id"]), "kind": e["kind"]}
            for k, e in enumerate(video.expressions)}
