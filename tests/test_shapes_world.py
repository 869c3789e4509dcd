"""The shapes world: generator determinism and ground truth, captions and tokens, detectors on ground truth."""

import jax
import numpy as np
import pytest

from sixbit_jax.errors import InputError
from sixbit_jax.shapes import world
from sixbit_jax.shapes.detect import NOTHING, UNCLEAR, detect, prompt_accuracy
from sixbit_jax.shapes.text import MAX_TOKENS, VOCAB, Tokenizer, clip_tokens

SEED = np.random.SeedSequence().entropy % 2**31  # fresh clips every run; printed on failure via the ids below


@pytest.fixture(scope="module")
def clips():
    return world.sample_clips(jax.random.key(SEED), 400)


@pytest.fixture(scope="module")
def frames(clips):
    return np.asarray(world.render(clips))


def test_generator_is_deterministic_for_a_key():
    a = world.render(world.sample_clips(jax.random.key(7), 16))
    b = world.render(world.sample_clips(jax.random.key(7), 16))
    c = world.render(world.sample_clips(jax.random.key(8), 16))
    assert a.shape == (16, world.FRAMES, world.SIZE, world.SIZE, 3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_frames_show_exactly_the_ground_truth(clips, frames):
    masks = np.asarray(world.object_masks(clips))
    for i, truth in enumerate(world.truths(clips)):
        colour, background = np.array(world.COLOURS[truth.colour]), np.array(world.BACKGROUNDS[truth.background])
        np.testing.assert_allclose(frames[i][masks[i]], np.broadcast_to(colour, frames[i][masks[i]].shape))
        np.testing.assert_allclose(frames[i][~masks[i]], np.broadcast_to(background, frames[i][~masks[i]].shape))
        assert masks[i].sum(axis=(1, 2)).min() > 20, f"seed {SEED} clip {i}: object too small or missing"
        edges = np.concatenate([masks[i][:, 0], masks[i][:, -1], masks[i][:, :, 0], masks[i][:, :, -1]], axis=1)
        assert not edges.any(), f"seed {SEED} clip {i}: object touches the frame edge"


def test_objects_move_as_their_motion_says(clips):
    path = np.asarray(world.centres(clips))
    travel = path[:, -1] - path[:, 0]
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
    for i, truth in enumerate(world.truths(clips)):
        direction = np.sign(np.round(travel[i], 3))
        assert tuple(direction) == expected[truth.motion], f"seed {SEED} clip {i}: {truth} travelled {travel[i]}"


def test_captions_tokens_and_parsing_agree(clips):
    captions = world.captions(clips)
    np.testing.assert_array_equal(Tokenizer().encode(captions), np.asarray(clip_tokens(clips)))
    assert [world.parse_caption(c) for c in captions] == world.truths(clips)
    assert world.caption(world.Truth("circle", "red", "right")) == "a red circle moving right"
    assert world.caption(world.Truth("square", "cyan", "still", "navy")) == \
        "a cyan square standing still on a navy background"


def test_tokenizer_pads_and_names_unknown_words():
    ids = Tokenizer().encode(["A red circle moving right.", ""])
    assert ids.shape == (2, MAX_TOKENS) and ids.dtype == np.int32
    assert [VOCAB[i] for i in ids[0, :5]] == ["a", "red", "circle", "moving", "right"]
    assert (ids[0, 5:] == 0).all() and (ids[1] == 0).all()
    with pytest.raises(InputError, match=r"unknown word\(s\) 'purple'.*vocabulary is: a moving"):
        Tokenizer().encode("a purple circle moving right")
    with pytest.raises(InputError, match="unknown word"):
        Tokenizer().encode("<pad>")
    with pytest.raises(InputError, match="at most 12 fit"):
        Tokenizer().encode(" ".join(["a"] * 13))


@pytest.mark.parametrize("prompt", ["a red circle", "a red circle moving still", "the red circle moving left",
                                    "a red circle moving left on a black background", "a red hexagon standing still"])
def test_prompts_outside_the_grammar_are_named(prompt):
    with pytest.raises(InputError, match="not in the shapes grammar"):
        world.parse_caption(prompt)


def test_detectors_read_ground_truth_above_95_percent(clips, frames):
    scores = prompt_accuracy([detect(f) for f in frames], world.truths(clips))
    assert scores["prompt"] > 0.95, f"seed {SEED}: {scores}"
    assert min(scores.values()) > 0.95, f"seed {SEED}: {scores}"


def test_detectors_survive_noise_and_uint8(clips, frames):
    rng = np.random.default_rng(SEED)
    noisy = np.clip(frames[:100] + rng.normal(0, 0.05, frames[:100].shape), 0, 1)
    truths = world.truths(clips)[:100]
    assert prompt_accuracy([detect(f) for f in noisy], truths)["prompt"] > 0.95
    as_uint8 = np.round(frames[:20] * 255).astype(np.uint8)
    assert [detect(f) for f in as_uint8] == truths[:20]


def test_detectors_shrug_off_stray_pixels_on_the_outline(clips, frames):
    """Generated frames have a few wrong pixels at patch borders; one or two protruding pixels must not flip the
    shape (a bounding-box measure would)."""
    masks = np.asarray(world.object_masks(clips))[:60]
    rng = np.random.default_rng(SEED)
    spurred = frames[:60].copy()
    for clip, mask in zip(spurred, masks):
        for frame, m in zip(clip, mask):
            outline = np.argwhere(np.logical_xor(np.pad(m, 1)[:-2, 1:-1] | np.pad(m, 1)[2:, 1:-1], m) & ~m)
            for y, x in outline[rng.choice(len(outline), 2, replace=False)]:
                frame[y, x] = frame[m][0]
    assert prompt_accuracy([detect(f) for f in spurred], world.truths(clips)[:60])["prompt"] > 0.95


def test_a_blob_unlike_every_shape_is_unclear():
    clip = np.zeros((world.FRAMES, world.SIZE, world.SIZE, 3))
    clip[:, 15, 4:28] = 1.0  # a one-pixel line
    assert detect(clip).shape == UNCLEAR


def test_detectors_report_an_empty_clip_as_nothing():
    empty = np.zeros((world.FRAMES, world.SIZE, world.SIZE, 3))
    assert detect(empty) == world.Truth(NOTHING, NOTHING, NOTHING, "black")


def test_prompt_accuracy_counts_each_attribute():
    wanted = [world.Truth("circle", "red", "left"), world.Truth("square", "blue", "up")]
    got = [world.Truth("circle", "red", "left"), world.Truth("square", "green", "up")]
    scores = prompt_accuracy(got, wanted)
    assert scores == {"shape": 1.0, "colour": 0.5, "motion": 1.0, "background": 1.0, "prompt": 0.5}
