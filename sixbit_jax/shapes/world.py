"""The shapes world: procedural clips of one moving object, their captions, and their ground truth.

A clip is 8 frames of 32x32 RGB in [0, 1]: one object (circle, square or triangle; one of seven colours) moving
left, right, up or down at 1-1.6 px/frame, or standing still, on a black background or a dark coloured one. The
whole trajectory stays inside the frame. Captions come from one fixed grammar:

    a <colour> <shape> (moving <left|right|up|down> | standing still) [on a <background> background]

(black backgrounds are not mentioned). Rendering is plain jnp, so training draws fresh clips on the accelerator
every step; `sample_clips` is deterministic for a key, and a clip's ground truth is its `Clips` row."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sixbit_jax.errors import InputError

FRAMES = 8
SIZE = 32

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.20, 0.35, 1.00),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.90, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "white": (0.95, 0.95, 0.95),
}
MOTIONS = ("left", "right", "up", "down", "still")
# Index 0 is the unmentioned default. Backgrounds are dark so every object colour stands out from every background.
BACKGROUNDS = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.40, 0.40, 0.40),
    "navy": (0.05, 0.05, 0.38),
    "brown": (0.38, 0.20, 0.06),
}
# (dx, dy) per frame for a unit speed; image y grows downwards.
_DIRECTIONS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (0, 0)], np.float32)

RADIUS_RANGE = (4.0, 6.0)  # px; objects are 8-12 px across
SPEED_RANGE = (1.0, 1.6)  # px per frame
P_BLACK_BACKGROUND = 0.5


class Clips(NamedTuple):
    """A batch of clip descriptions (the ground truth): indices into SHAPES/COLOURS/MOTIONS/BACKGROUNDS, the
    object's radius and speed in px, and its centre (x, y) in the first frame."""

    shape: jax.Array  # [B] int32
    colour: jax.Array  # [B] int32
    motion: jax.Array  # [B] int32
    background: jax.Array  # [B] int32
    radius: jax.Array  # [B] float32
    speed: jax.Array  # [B] float32
    start: jax.Array  # [B, 2] float32

    def __len__(self) -> int:
        return int(self.shape.shape[0])


class Truth(NamedTuple):
    """What a clip or a prompt says, in words."""

    shape: str
    colour: str
    motion: str
    background: str = "black"


def sample_clips(key: jax.Array, n: int) -> Clips:
    """n random clips; the same key gives the same clips on every backend."""
    k = jax.random.split(key, 8)
    shape = jax.random.randint(k[0], (n,), 0, len(SHAPES))
    colour = jax.random.randint(k[1], (n,), 0, len(COLOURS))
    motion = jax.random.randint(k[2], (n,), 0, len(MOTIONS))
    coloured = jax.random.randint(k[3], (n,), 1, len(BACKGROUNDS))
    background = jnp.where(jax.random.uniform(k[4], (n,)) < P_BLACK_BACKGROUND, 0, coloured)
    radius = jax.random.uniform(k[5], (n,), minval=RADIUS_RANGE[0], maxval=RADIUS_RANGE[1])
    speed = jax.random.uniform(k[6], (n,), minval=SPEED_RANGE[0], maxval=SPEED_RANGE[1])
    start = _start_positions(k[7], motion, radius, speed)
    return Clips(shape.astype(jnp.int32), colour.astype(jnp.int32), motion.astype(jnp.int32),
                 background.astype(jnp.int32), radius, speed, start)


def _start_positions(key, motion, radius, speed):
    """Uniform over the first-frame centres whose whole trajectory keeps a 1 px margin inside the frame."""
    travel = jnp.asarray(_DIRECTIONS)[motion] * (speed * (FRAMES - 1))[:, None]  # [B, 2]
    margin = (radius + 1.0)[:, None]
    low = margin + jnp.maximum(0.0, -travel)
    high = SIZE - margin - jnp.maximum(0.0, travel)
    return low + jax.random.uniform(key, travel.shape) * (high - low)


def centres(clips: Clips) -> jax.Array:
    """Object centre (x, y) in every frame: [B, FRAMES, 2]."""
    velocity = jnp.asarray(_DIRECTIONS)[clips.motion] * clips.speed[:, None]
    return clips.start[:, None, :] + jnp.arange(FRAMES, dtype=jnp.float32)[None, :, None] * velocity[:, None, :]


def object_masks(clips: Clips) -> jax.Array:
    """[B, FRAMES, SIZE, SIZE] bool: pixels (tested at their centres) inside the object. Squares have the circle's
    area; triangles point up, with their apex and base on the circle's bounding box."""
    centre = centres(clips)
    grid = jnp.arange(SIZE, dtype=jnp.float32) + 0.5
    dx = grid[None, None, None, :] - centre[..., 0, None, None]
    dy = grid[None, None, :, None] - centre[..., 1, None, None]
    r = clips.radius[:, None, None, None]
    circle = dx**2 + dy**2 <= r**2
    half_side = r * float(np.sqrt(np.pi) / 2)
    square = (jnp.abs(dx) <= half_side) & (jnp.abs(dy) <= half_side)
    triangle = (dy >= -r) & (dy <= r) & (jnp.abs(dx) <= (dy + r) / 2)
    shape = clips.shape[:, None, None, None]
    return jnp.where(shape == 0, circle, jnp.where(shape == 1, square, triangle))


def render(clips: Clips) -> jax.Array:
    """The clips' frames: [B, FRAMES, SIZE, SIZE, 3] float32 in [0, 1]."""
    colour = jnp.asarray(list(COLOURS.values()), jnp.float32)[clips.colour]
    background = jnp.asarray(list(BACKGROUNDS.values()), jnp.float32)[clips.background]
    mask = object_masks(clips)[..., None]
    return jnp.where(mask, colour[:, None, None, None, :], background[:, None, None, None, :])


def to_latents(frames: jax.Array) -> jax.Array:
    """Frames [B, F, H, W, 3] in [0, 1] -> the model's input layout [B, F, 3, H, W] in [-1, 1] (pixel space)."""
    return jnp.moveaxis(frames, -1, 2) * 2.0 - 1.0


def from_latents(latents: jax.Array) -> jax.Array:
    """The inverse of to_latents, in float32 and clipped to [0, 1]."""
    return jnp.clip((jnp.moveaxis(latents.astype(jnp.float32), 2, -1) + 1.0) / 2.0, 0.0, 1.0)


def truths(clips: Clips) -> list[Truth]:
    """Each clip's ground truth in words (host side)."""
    rows = zip(*(np.asarray(a).tolist() for a in (clips.shape, clips.colour, clips.motion, clips.background)))
    return [Truth(SHAPES[s], list(COLOURS)[c], MOTIONS[m], list(BACKGROUNDS)[b]) for s, c, m, b in rows]


def caption(truth: Truth) -> str:
    motion = "standing still" if truth.motion == "still" else f"moving {truth.motion}"
    text = f"a {truth.colour} {truth.shape} {motion}"
    return text if truth.background == "black" else f"{text} on a {truth.background} background"


def captions(clips: Clips) -> list[str]:
    return [caption(t) for t in truths(clips)]


def parse_caption(text: str) -> Truth:
    """The ground truth a prompt of the grammar asks for; InputError naming the grammar otherwise."""
    words = text.lower().replace(".", " ").split()
    grammar = ("a <colour> <shape> (moving <left|right|up|down> | standing still) [on a <background> background]; "
               f"colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; backgrounds: "
               f"{', '.join(list(BACKGROUNDS)[1:])}")
    if not words:
        raise InputError(f"the prompt is empty; the shapes model draws prompts of its grammar: {grammar}")
    try:
        a, colour, shape, verb, motion, *rest = words
        ok = (a == "a" and colour in COLOURS and shape in SHAPES
              and ((verb == "moving" and motion in MOTIONS[:-1]) or (verb, motion) == ("standing", "still")))
        background = "black"
        if rest:
            on, a2, background, noun = rest
            ok = ok and (on, a2, noun) == ("on", "a", "background") and background in list(BACKGROUNDS)[1:]
    except ValueError:
        ok = False
    if not ok:
        known = {"a", "on", "moving", "standing", "still", "background", *COLOURS, *SHAPES, *MOTIONS, *BACKGROUNDS}
        unknown = [w for w in words if w not in known]
        which = f" (unknown word(s) {', '.join(map(repr, unknown))})" if unknown else ""
        raise InputError(f"prompt {text!r} is not in the shapes grammar{which}: {grammar}")
    return Truth(shape, colour, motion, background)
