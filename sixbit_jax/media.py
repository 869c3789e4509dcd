"""Pictures out: video clips as GIF/MP4, contact sheets and line charts as PNG. Pillow draws everything; MP4 needs
the ffmpeg binary that the `imageio-ffmpeg` wheel ships (`pip install 'sixbit-jax[video]'`). Every file is written
to a temporary name beside its destination and renamed into place."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sixbit_jax.errors import InputError


@contextlib.contextmanager
def _atomic_path(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_uint8(frames) -> np.ndarray:
    """Float frames in [0, 1] (values outside are clipped) or uint8 frames -> uint8 [..., H, W, 3]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.round(np.clip(np.nan_to_num(frames.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)


def _check_clip(frames: np.ndarray) -> np.ndarray:
    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"a clip must be [frames, height, width, 3]; got {frames.shape}")
    return frames


def _upscale(frame: np.ndarray, scale: int) -> Image.Image:
    image = Image.fromarray(frame)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def read_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """An image file as float32 [height, width, 3] in [0, 1], resized (Lanczos) when its size differs, as
    diffusers' image processor prepares a PIL image for the image-to-video pipelines."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
            return np.asarray(image, np.float32) / 255.0
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"cannot read the image {path}: {error}") from None


def write_gif(path: str | Path, frames, *, fps: float = 6.0, scale: int = 1) -> Path:
    """A looping GIF of one clip [F, H, W, 3]; `scale` enlarges each pixel to scale x scale."""
    frames = _check_clip(frames)
    images = [_upscale(f, scale) for f in frames]
    with _atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=0, disposal=1)
    return Path(path)


def ffmpeg_binary() -> str | None:
    """The ffmpeg that ships in the imageio-ffmpeg wheel, or None when that wheel is not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def write_mp4(path: str | Path, frames, *, fps: float = 6.0, scale: int = 8) -> Path | None:
    """An H.264 MP4 of one clip through imageio-ffmpeg's ffmpeg; None (nothing written) without it. Sizes are
    rounded up to even numbers, which yuv420p needs."""
    exe = ffmpeg_binary()
    if exe is None:
        return None
    frames = _check_clip(frames)
    images = np.stack([np.asarray(_upscale(f, scale)) for f in frames])
    _, h, w, _ = images.shape
    images = np.pad(images, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with _atomic_path(path) as tmp:
        command = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                   "-s", f"{images.shape[2]}x{images.shape[1]}", "-r", str(fps), "-i", "-",
                   "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp)]
        done = subprocess.run(command, input=images.tobytes(), capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {done.stderr.decode(errors='replace').strip()}")
    return Path(path)


def contact_sheet(path: str | Path, rows: Sequence[tuple[str, np.ndarray]], *, scale: int = 3) -> Path:
    """One row per (label, clip [F, H, W, 3]): the label on the left, then the clip's frames side by side."""
    if not rows:
        raise InputError("a contact sheet needs at least one row")
    clips = [_check_clip(clip) for _, clip in rows]
    font = ImageFont.load_default()
    frames, h, w, _ = clips[0].shape
    label_width = 8 + max(int(font.getlength(label)) for label, _ in rows)
    gap = 2
    sheet = Image.new("RGB", (label_width + frames * (w * scale + gap), len(rows) * (h * scale + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, ((label, _), clip) in enumerate(zip(rows, clips)):
        top = r * (h * scale + gap)
        draw.text((4, top + h * scale // 2 - 6), label, fill="black", font=font)
        for f, frame in enumerate(clip):
            sheet.paste(_upscale(frame, scale), (label_width + f * (w * scale + gap), top))
    with _atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def line_chart(path: str | Path, x: Sequence[float], series: dict[str, Sequence[float]], *, title: str,
               x_label: str, log_y: bool = False, size: tuple[int, int] = (720, 420)) -> Path:
    """A plain line chart (one line per series) with labelled axes, enough for a training-loss curve."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    font = ImageFont.load_default()
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x = np.asarray(x, np.float64)
    ys = {k: np.asarray(v, np.float64) for k, v in series.items()}
    transform = (lambda v: np.log10(np.maximum(v, 1e-12))) if log_y else (lambda v: v)
    all_y = np.concatenate([transform(v) for v in ys.values()])
    y_lo, y_hi = float(all_y.min()), float(all_y.max())
    y_hi = y_hi if y_hi > y_lo else y_lo + 1.0
    x_lo, x_hi = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1.0

    def px(xv, yv):
        return (left + (xv - x_lo) / (x_hi - x_lo) * (width - left - right),
                height - bottom - (yv - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(5):
        yv = y_lo + (y_hi - y_lo) * i / 4
        _, yp = px(x_lo, yv)
        draw.line([left - 4, yp, left, yp], fill="black")
        draw.text((4, yp - 6), f"{10 ** yv if log_y else yv:.3g}", fill="black", font=font)
        xv = x_lo + (x_hi - x_lo) * i / 4
        xp, _ = px(xv, y_lo)
        draw.line([xp, height - bottom, xp, height - bottom + 4], fill="black")
        draw.text((xp - 12, height - bottom + 8), f"{xv:.4g}", fill="black", font=font)
    for i, (name, values) in enumerate(ys.items()):
        points = [px(a, b) for a, b in zip(x, transform(values)) if math.isfinite(b)]
        draw.line(points, fill=colours[i % len(colours)], width=2)
        draw.text((width - right - 180, top + 6 + 14 * i), name, fill=colours[i % len(colours)], font=font)
    draw.text((left, 12), title, fill="black", font=font)
    draw.text((width // 2 - 20, height - 20), x_label, fill="black", font=font)
    with _atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def scatter_panels(path: str | Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *,
                   classes: Sequence[str], title: str, x_label: str, y_label: str, columns: int = 3,
                   panel_size: tuple[int, int] = (300, 220)) -> Path:
    """Small scatter plots side by side, one per panel (title, x, y, class index per point), sharing axes; points
    coloured by class, with a legend of `classes`. Enough to show which points a rule sent where."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    font = ImageFont.load_default()
    rows = -(-len(panels) // columns)
    pw, ph = panel_size
    left, top, bottom = 50, 40, 30
    image = Image.new("RGB", (columns * pw + 20, top + rows * ph + bottom), "white")
    draw = ImageDraw.Draw(image)
    xs = np.concatenate([np.asarray(p[1], np.float64) for p in panels])
    ys = np.concatenate([np.asarray(p[2], np.float64) for p in panels])
    x_lo, x_hi = float(np.nanmin(xs)), float(np.nanmax(xs)) + 1e-12
    y_lo, y_hi = float(np.nanmin(ys)), float(np.nanmax(ys)) + 1e-12
    for index, (name, x, y, cls) in enumerate(panels):
        ox, oy = (index % columns) * pw + left, top + (index // columns) * ph
        w, h = pw - left - 10, ph - 40
        draw.rectangle([ox, oy, ox + w, oy + h], outline="black")
        draw.text((ox, oy - 13), name, fill="black", font=font)
        for value, label in ((y_lo, f"{y_lo:.3g}"), (y_hi, f"{y_hi:.3g}")):
            draw.text((ox - 45, oy + h - (value - y_lo) / (y_hi - y_lo) * h - 6), label, fill="black", font=font)
        draw.text((ox, oy + h + 3), f"{x_lo:.3g}", fill="black", font=font)
        draw.text((ox + w - 20, oy + h + 3), f"{x_hi:.3g}", fill="black", font=font)
        for xv, yv, c in zip(np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(cls)):
            if math.isfinite(xv) and math.isfinite(yv):
                px = ox + (xv - x_lo) / (x_hi - x_lo) * w
                py = oy + h - (yv - y_lo) / (y_hi - y_lo) * h
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colours[int(c) % len(colours)])
    draw.text((10, 8), f"{title}   ({y_label} against {x_label})", fill="black", font=font)
    for i, name in enumerate(classes):
        draw.text((columns * pw - 150, 8 + 12 * i), name, fill=colours[i % len(colours)], font=font)
    with _atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
