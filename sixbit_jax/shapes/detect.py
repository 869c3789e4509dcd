"""Analytic detectors: read a clip's shape, colour, motion and background off its frames (numpy, host side).

- background: the median colour of the border pixels over all frames, matched to the nearest background colour;
- object: per frame, the largest 8-connected blob of pixels that differ from that background colour by more than
  OBJECT_DISTANCE (so stray noisy pixels in a generated frame do not count);
- colour: the median colour of the object pixels, matched to the nearest object colour;
- shape: per frame, the ideal circle, square and up-pointing triangle with the object's area and centroid are laid
  over it; the best overlap (intersection over union) votes, and the majority of frames decides. Unlike bounding-box
  measures this shrugs off the stray pixels at patch borders that generated frames have; a best overlap under
  MIN_SHAPE_IOU reads as "unclear";
- motion: the least-squares velocity of the object's centroid; under STILL_TRAVEL px over the clip is "still".

`prompt_accuracy` compares detections with what the prompts asked for."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import ndimage

from sixbit_jax.shapes.world import BACKGROUNDS, COLOURS, Truth

OBJECT_DISTANCE = 0.3  # RGB distance (0..sqrt 3) from the background that makes a pixel part of the object
MIN_OBJECT_PIXELS = 6
MIN_SHAPE_IOU = 0.5
STILL_TRAVEL = 3.0  # px over the whole clip
NOTHING = "nothing"
UNCLEAR = "unclear"

_COLOUR_TABLE = np.array(list(COLOURS.values()))
_BACKGROUND_TABLE = np.array(list(BACKGROUNDS.values()))

def _nearest(table: np.ndarray, names, rgb: np.ndarray) -> str:
    return list(names)[int(np.argmin(((table - rgb) ** 2).sum(-1)))]

def _largest_blob(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def detect(frames: np.ndarray) -> Truth:
    """frames [F, H, W, 3] in [0, 1] (float) or 0..255 (uint8) -> what the clip shows. An empty clip reads as
    shape, colour and motion "nothing"."""
    frames = np.asarray(frames, np.float64)
    if frames.max() > 1.5:
        frames = frames / 255.0
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    background_rgb = np.median(border.reshape(-1, 3), axis=0)
    background = _nearest(_BACKGROUND_TABLE, BACKGROUNDS, background_rgb)
    differs = np.linalg.norm(frames - background_rgb, axis=-1) > OBJECT_DISTANCE
    blobs = [_largest_blob(m) for m in differs]
    present = [i for i, b in enumerate(blobs) if b.sum() >= MIN_OBJECT_PIXELS]
    if len(present) < len(frames) // 2:
        return Truth(NOTHING, NOTHING, NOTHING, background)
    pixels = np.concatenate([frames[i][blobs[i]] for i in present])
    colour = _nearest(_COLOUR_TABLE, COLOURS, np.median(pixels, axis=0))
    shape = Counter(_shape(blobs[i]) for i in present).most_common(1)[0][0]
    centroids = []
    for i in present:
        ys, xs = np.nonzero(blobs[i])
        centroids.append((xs.mean(), ys.mean()))
    return Truth(shape, colour, _motion(np.array(present, np.float64), np.array(centroids)), background)


def _shape(blob: np.ndarray) -> str:
    """The template (same area, same centroid) that overlaps the blob best, matching world.object_masks' shapes."""
    ys, xs = np.nonzero(blob)
    area, cx, cy = len(ys), xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres sit at +0.5
    grid = np.arange(blob.shape[0]) + 0.5
    dx, dy = grid[None, :] - cx, grid[:, None] - cy
    r = np.sqrt(area / np.pi)
    half_side = np.sqrt(area) / 2
    r_tri = np.sqrt(area / 2)  # a triangle of base 2r and height 2r has area 2r^2; its centroid is r/3 below centre
    dy_tri = dy + r_tri / 3
    templates = {"circle": dx**2 + dy**2 <= r**2,
                 "square": (np.abs(dx) <= half_side) & (np.abs(dy) <= half_side),
                 "triangle": (np.abs(dy_tri) <= r_tri) & (np.abs(dx) <= (dy_tri + r_tri) / 2)}
    iou = {name: (blob & t).sum() / (blob | t).sum() for name, t in templates.items()}
    best = max(iou, key=iou.get)
    return best if iou[best] >= MIN_SHAPE_IOU else UNCLEAR


def _motion(times: np.ndarray, centroids: np.ndarray) -> str:
    t = times - times.mean()
    velocity = (t[:, None] * (centroids - centroids.mean(0))).sum(0) / max((t**2).sum(), 1e-9)  # (vx, vy)
    travel = velocity * (times.max() - times.min())
    if np.abs(travel).max() < STILL_TRAVEL:
        return "still"
    if abs(travel[0]) >= abs(travel[1]):
        return "right" if travel[0] > 0 else "left"
    return "down" if travel[1] > 0 else "up"

def prompt_accuracy(detections: list[Truth], wanted: list[Truth]) -> dict[str, float]:
    """Fraction of clips matching their prompt on each attribute, and on all of them ("prompt")."""
    if len(detections) != len(wanted) or not wanted:
        raise ValueError(f"need one detection per prompt; got {len(detections)} for {len(wanted)}")
    scores = {field: float(np.mean([getattr(d, field) == getattr(w, field) for d, w in zip(detections, wanted)]))
              for field in Truth._fields}
    scores["prompt"] = float(np.mean([d == w for d, w in zip(detections, wanted)]))
    return scores
