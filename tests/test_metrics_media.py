"""PSNR/SSIM against a float64 brute-force reference; GIF/MP4/PNG writers read back."""

import math

import numpy as np
import pytest
from PIL import Image

from sixbit_jax.errors import InputError
from sixbit_jax.media import contact_sheet, ffmpeg_binary, line_chart, to_uint8, write_gif, write_mp4
from sixbit_jax.metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, psnr, ssim


def ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM written out window by window: 11x11 Gaussian weights (sigma 1.5) over a reflected image."""
    offsets = np.arange(-5, 6)
    g = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    values = []
    for channel in range(a.shape[-1]):
        pa = np.pad(a[..., channel], 5, mode="symmetric")  # scipy's "reflect" repeats the edge pixel
        pb = np.pad(b[..., channel], 5, mode="symmetric")
        for y in range(a.shape[0]):
            for x in range(a.shape[1]):
                wa, wb = pa[y:y + 11, x:x + 11], pb[y:y + 11, x:x + 11]
                ma, mb = (weights * wa).sum(), (weights * wb).sum()
                va, vb = (weights * wa**2).sum() - ma**2, (weights * wb**2).sum() - mb**2
                cov = (weights * wa * wb).sum() - ma * mb
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_brute_force_reference():
    rng = np.random.default_rng()
    a = rng.uniform(size=(13, 17, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(ssim_brute_force(a, b), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.99


def test_ssim_averages_over_leading_axes_and_rejects_mismatched_shapes():
    rng = np.random.default_rng()
    a, b = rng.uniform(size=(2, 12, 12, 3)), rng.uniform(size=(2, 12, 12, 3))
    assert ssim(a, b) == pytest.approx(np.mean([ssim(a[0], b[0]), ssim(a[1], b[1])]))
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, b[0])


def test_psnr_known_values():
    a = np.zeros((4, 4, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf


def test_to_uint8_clips_and_rounds():
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan])), [0, 0, 128, 255, 255, 0])


def test_gif_has_every_frame_at_the_requested_scale(tmp_path):
    clip = np.random.default_rng().uniform(size=(5, 6, 7, 3))
    path = write_gif(tmp_path / "sub" / "clip.gif", clip, scale=3)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (21, 18)
        gif.seek(4)
        first_pixel = np.asarray(gif.convert("RGB"))[0, 0]
    np.testing.assert_allclose(first_pixel, to_uint8(clip[4, 0, 0]), atol=16)  # GIF palette quantisation
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["clip.gif"], "no temporary file left behind"
    with pytest.raises(InputError, match=r"\[frames, height, width, 3\]"):
        write_gif(tmp_path / "bad.gif", clip[0])


def test_mp4_written_when_ffmpeg_is_available(tmp_path):
    clip = np.random.default_rng().uniform(size=(4, 5, 5, 3))
    path = write_mp4(tmp_path / "clip.mp4", clip, scale=3)
    if ffmpeg_binary() is None:
        assert path is None and not (tmp_path / "clip.mp4").exists()
        pytest.skip("imageio-ffmpeg is not installed: write_mp4 writes nothing, as it should")
    assert path.stat().st_size > 0 and path.read_bytes()[4:8] == b"ftyp"


def test_contact_sheet_and_line_chart(tmp_path):
    clip = np.zeros((3, 8, 8, 3))
    sheet = contact_sheet(tmp_path / "sheet.png", [("a", clip), ("b", clip + 1)], scale=2)
    with Image.open(sheet) as image:
        assert image.height == 2 * (16 + 2) and image.width > 3 * 16
    chart = line_chart(tmp_path / "loss.png", [1, 2, 3], {"loss": [1.0, 0.5, 0.25]}, title="t", x_label="step",
                       log_y=True)
    with Image.open(chart) as image:
        assert image.size == (720, 420)
