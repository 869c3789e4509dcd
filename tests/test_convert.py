"""The checkpoint converter: diffusers `transformer/` folder -> sixbit-jax checkpoint -> loaded model.

Round trips use tiny diffusers models with random weights (tests/diffusers_ref.py): every converted parameter must
equal the diffusers tensor bit for bit, and the loaded model must reproduce diffusers' forward pass. The error tests
check that each bad input raises the project's own error with a message naming the problem, and that a failed
conversion leaves nothing behind (no destination, no hidden `.partial-` folder)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from conftest import rel_err
from diffusers_ref import diffusers_forward, state_dict_numpy, tiny_diffusers_model, torch

import convert
from convert.cogvideox import expected_tensors
from convert.source import INDEX_NAME, WEIGHTS_NAME
from sixbit_jax.checkpoint import INFO_NAME, abstract_params, load_checkpoint, save_checkpoint
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import CheckpointError, ConfigError

# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
_MODELS: dict[tuple[str, int], object] = {}


def model_for(flavour: str, seed: int = 0):
    """Tiny diffusers models are cheap but not free; build each one once per session (they are never mutated)."""
    if (flavour, seed) not in _MODELS:
        _MODELS[flavour, seed] = tiny_diffusers_model(flavour, seed=seed)
    return _MODELS[flavour, seed]


def config_of(model) -> CogVideoXConfig:
    return CogVideoXConfig.from_dict(dict(model.config))


def params_of(jax_model) -> dict:
    return nnx.to_pure_dict(nnx.state(jax_model))


def leaf(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def converted_value(params: dict, spec) -> np.ndarray:
    """Where the key map puts diffusers tensor `spec.source_key` in our tree, reshaped back to its source shape."""
    value = np.asarray(leaf(params, spec.target))
    if spec.layer is not None:
        value = value[spec.layer]
    assert value.shape == (spec.target_shape or spec.source_shape), spec.source_key
    return value.reshape(spec.source_shape)


def write_single_file_source(folder: Path, model, tensors: dict[str, np.ndarray] | None = None) -> Path:
    """A diffusers-style folder: config.json plus one safetensors file written straight from `tensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    save_file(state_dict_numpy(model) if tensors is None else tensors, str(folder / WEIGHTS_NAME))
    return folder


def write_sharded_source(folder: Path, model) -> Path:
    model.save_pretrained(folder, max_shard_size="50KB", safe_serialization=True)
    return folder


def leftovers(dst: Path) -> list[str]:
    """Hidden temporary folders the atomic writer could have left beside `dst`."""
    if not dst.parent.exists():
        return []
    return sorted(p.name for p in dst.parent.iterdir()
                  if p.name.startswith(f".{dst.name}.partial-") or p.name.startswith(f".{dst.name}.old-"))


def assert_nothing_written(dst: Path) -> None:
    assert not dst.exists(), f"a failed conversion left {dst}"
    assert leftovers(dst) == [], f"a failed conversion left temporary folders {leftovers(dst)}"


def conversion_error(src: Path, dst: Path, error=CheckpointError, *, contains: tuple[str, ...] = (), **kwargs) -> str:
    """Convert, expect `error`, check its message names every string in `contains`, and that nothing was written."""
    with pytest.raises(error) as info:
        convert.convert_checkpoint(src, dst, progress=False, **kwargs)
    message = str(info.value)
    for text in contains:
        assert text in message, f"{text!r} not named in the error message:\n{message}"
    assert_nothing_written(dst)
    return message


@pytest.fixture
def dst(tmp_path) -> Path:
    """A destination inside an existing, otherwise empty folder, so leftovers beside it can be listed."""
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / "ckpt"


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """The 2B tiny model saved by diffusers unsharded (default max_shard_size) and converted to bf16."""
    root = tmp_path_factory.mktemp("bf16")
    model = model_for("2b")
    model.save_pretrained(root / "transformer", safe_serialization=True)
    convert.convert_checkpoint(root / "transformer", root / "ckpt", dtype="bf16", progress=False)
    return root / "ckpt", model


# --------------------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["2b", "5b"])
def test_round_trip_sharded_fp32(tmp_path, flavour):
    model = model_for(flavour)
    src = write_sharded_source(tmp_path / "transformer", model)
    shards = sorted(src.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1, "the source should really be sharded"
    assert not (src / WEIGHTS_NAME).exists()
    weight_map = json.loads((src / INDEX_NAME).read_text())["weight_map"]
    assert {src / f for f in weight_map.values()} == set(shards)

    dst = convert.convert_checkpoint(src, tmp_path / "ckpt", dtype="fp32", progress=False)
    assert dst == tmp_path / "ckpt"
    info = json.loads((dst / INFO_NAME).read_text())
    assert info["dtype"] == "float32"
    assert info["converted_from"] == str(src.absolute())
    assert CogVideoXConfig.from_dict(info["config"]) == config_of(model)
    assert leftovers(dst) == []

    jax_model = load_checkpoint(dst)
    assert jax_model.dtype == jnp.float32
    params = params_of(jax_model)
    sd = state_dict_numpy(model)
    specs = expected_tensors(config_of(model))
    assert set(specs) == set(weight_map) == set(sd)
    for key, spec in specs.items():
        value = converted_value(params, spec)
        assert value.dtype == np.float32, key
        np.testing.assert_array_equal(value, sd[key], err_msg=key)

    rng = np.random.default_rng(1)
    latents = rng.standard_normal((2, 3, 4, 8, 12)).astype(np.float32)
    text = rng.standard_normal((2, 8, 32)).astype(np.float32)
    timesteps = np.array([999, 37], np.int64)
    ours = np.asarray(jax_model(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps, jnp.int32)))
    ref = diffusers_forward(model, latents, text, timesteps)
    assert ours.shape == ref.shape == latents.shape
    assert rel_err(ours, ref) < 1e-5


def test_key_map_covers_every_parameter():
    """Each element of the model's parameter tree is written by exactly one diffusers tensor (the converter
    allocates with np.empty, so an element the key map forgets would silently hold garbage)."""
    for flavour in ("2b", "5b"):
        cfg = config_of(model_for(flavour))
        counts = jax.tree.map(lambda s: np.zeros(s.shape, np.int32), abstract_params(cfg, jnp.float32))
        for spec in expected_tensors(cfg).values():
            target = leaf(counts, spec.target)
            if spec.layer is None:
                target[...] += 1
            else:
                target[spec.layer] += 1
        for path, count in jax.tree_util.tree_leaves_with_path(counts):
            assert (count == 1).all(), \
                f"{flavour}: {jax.tree_util.keystr(path)} is written {count.min()}..{count.max()} times"


def test_round_trip_unsharded_bf16(bf16_checkpoint):
    dst, model = bf16_checkpoint
    src = dst.parent / "transformer"
    assert (src / WEIGHTS_NAME).exists() and not (src / INDEX_NAME).exists(), "the source should be one file"
    assert json.loads((dst / INFO_NAME).read_text())["dtype"] == "bfloat16"
    params = params_of(load_checkpoint(dst))
    specs = expected_tensors(config_of(model))
    for key, tensor in model.state_dict().items():
        value = converted_value(params, specs[key])
        assert value.dtype == jnp.bfloat16, key
        expected = tensor.detach().to(torch.bfloat16).float().numpy()  # torch's own round-to-nearest-even cast
        np.testing.assert_array_equal(value.astype(np.float32), expected, err_msg=key)


def test_load_checkpoint_casts_on_load(bf16_checkpoint):
    dst, model = bf16_checkpoint
    stored = params_of(load_checkpoint(dst))
    jax_model = load_checkpoint(dst, dtype="fp32")
    assert jax_model.dtype == jnp.float32
    cast = params_of(jax_model)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(cast), jax.tree.leaves(stored), strict=True):
        assert a.dtype == jnp.float32, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).astype(np.float32))
    # the cast parameters are the bf16-rounded diffusers weights, not something else
    w = model.proj_out.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(cast["proj_out"]["weight"]), w)


@pytest.mark.parametrize("source_dtype", ["bfloat16", "float16"])
def test_half_precision_source(tmp_path, source_dtype):
    """Released CogVideoX transformers are stored in bf16 (5B) or fp16 (2B): read them without torch, exactly."""
    tdtype = getattr(torch, source_dtype)
    model = model_for("5b")
    src = tmp_path / "transformer"
    src.mkdir()
    model.save_config(src)
    tensors = {k: v.detach().to(tdtype).contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file as save_torch_file

    save_torch_file(tensors, str(src / WEIGHTS_NAME))
    dst = convert.convert_checkpoint(src, tmp_path / "ckpt", dtype="fp32", progress=False)
    params = params_of(load_checkpoint(dst))
    specs = expected_tensors(config_of(model))
    for key, tensor in tensors.items():
        np.testing.assert_array_equal(converted_value(params, specs[key]), tensor.float().numpy(), err_msg=key)


# --------------------------------------------------------------------------------------------------------------
# Tensors that do not match the config
# --------------------------------------------------------------------------------------------------------------
def test_missing_tensor(tmp_path, dst):
    model = model_for("2b")
    sd = state_dict_numpy(model)
    del sd["transformer_blocks.1.attn1.to_k.weight"]
    src = write_single_file_source(tmp_path / "src", model, sd)
    message = conversion_error(src, dst, contains=("missing tensor transformer_blocks.1.attn1.to_k.weight", "(32, 32)"))
    assert "1 problem" in message


def test_unexpected_tensor(tmp_path, dst):
    model = model_for("2b")
    sd = state_dict_numpy(model)
    sd["transformer_blocks.0.attn1.extra.weight"] = np.zeros((3, 5), np.float32)
    src = write_single_file_source(tmp_path / "src", model, sd)
    conversion_error(src, dst, contains=("unexpected tensor transformer_blocks.0.attn1.extra.weight", "(3, 5)"))


def test_misshaped_tensor(tmp_path, dst):
    model = model_for("5b")
    sd = state_dict_numpy(model)
    sd["proj_out.weight"] = sd["proj_out.weight"][:, :-1]
    src = write_single_file_source(tmp_path / "src", model, sd)
    conversion_error(src, dst, contains=("proj_out.weight", "expected shape (16, 32)", "found (16, 31)"))


def test_several_problems_listed_in_one_error(tmp_path, dst):
    model = model_for("2b")
    sd = state_dict_numpy(model)
    del sd["norm_final.bias"]
    del sd["transformer_blocks.0.ff.net.2.weight"]
    sd["lora.weight"] = np.ones((2, 2), np.float32)
    sd["patch_embed.proj.weight"] = np.zeros((32, 4, 1, 1), np.float32)
    src = write_single_file_source(tmp_path / "src", model, sd)
    message = conversion_error(src, dst, contains=(
        "4 problems",
        "missing tensor norm_final.bias (expected shape (32,))",
        "missing tensor transformer_blocks.0.ff.net.2.weight (expected shape (32, 128))",
        "unexpected tensor lora.weight (shape (2, 2))",
        "patch_embed.proj.weight: expected shape (32, 4, 2, 2), found (32, 4, 1, 1)"))
    assert len(message.splitlines()) == 5, message


def test_tensors_of_the_wrong_config(tmp_path, dst):
    """Weights of a 3-layer model with a 2-layer config.json: the extra layer is named, nothing written."""
    src = write_single_file_source(tmp_path / "src", model_for("2b"),
                                   state_dict_numpy(tiny_diffusers_model("2b", num_layers=3)))
    message = conversion_error(src, dst, contains=("unexpected tensor transformer_blocks.2.attn1.to_q.weight",))
    assert "missing" not in message


def test_non_float_tensor(tmp_path, dst):
    model = model_for("2b")
    sd = state_dict_numpy(model)
    sd["proj_out.bias"] = np.arange(16, dtype=np.int64)
    src = write_single_file_source(tmp_path / "src", model, sd)
    conversion_error(src, dst, contains=("proj_out.bias", "int64"))


# --------------------------------------------------------------------------------------------------------------
# Bad source folders and config files
# --------------------------------------------------------------------------------------------------------------
def test_config_missing(tmp_path, dst):
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    (src / "config.json").unlink()
    conversion_error(src, dst, contains=("config.json", str(src)))


def test_source_folder_does_not_exist(tmp_path, dst):
    src = tmp_path / "no-such-folder"
    conversion_error(src, dst, contains=(str(src), "not a folder"))


def test_source_is_a_file(tmp_path, dst):
    src = tmp_path / WEIGHTS_NAME
    save_file(state_dict_numpy(model_for("2b")), str(src))
    conversion_error(src, dst, contains=(str(src), "not a folder"))


@pytest.mark.parametrize("key,value", [("patch_size_t", 2), ("ofs_embed_dim", 64),
                                       ("_class_name", "CogVideoXTransformer3DModelV2")])
def test_config_unsupported_value(tmp_path, dst, key, value):
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    raw = json.loads((src / "config.json").read_text())
    raw[key] = value
    (src / "config.json").write_text(json.dumps(raw))
    conversion_error(src, dst, ConfigError, contains=(key if key != "_class_name" else value,))


def test_config_invalid_json(tmp_path, dst):
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    (src / "config.json").write_text('{"num_layers": 2,')
    conversion_error(src, dst, ConfigError, contains=(str(src / "config.json"), "not valid JSON"))


# --------------------------------------------------------------------------------------------------------------
# Broken weight files
# --------------------------------------------------------------------------------------------------------------
def _garbage(data: bytes) -> bytes:
    return b"this is not a safetensors file\n" * 64


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_header(data: bytes) -> bytes:
    header = b"{not json at all}"
    return len(header).to_bytes(8, "little") + header


def _empty(data: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("corrupt", [_garbage, _half, _bad_header, _empty], ids=["garbage", "truncated", "bad-header",
                                                                                  "empty"])
def test_corrupt_single_file(tmp_path, dst, corrupt):
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    path = src / WEIGHTS_NAME
    path.write_bytes(corrupt(path.read_bytes()))
    conversion_error(src, dst, contains=(str(path), "corrupt"))


def test_truncated_shard(tmp_path, dst):
    src = write_sharded_source(tmp_path / "src", model_for("5b"))
    shard = sorted(src.glob("diffusion_pytorch_model-*.safetensors"))[2]
    shard.write_bytes(_half(shard.read_bytes()))
    conversion_error(src, dst, contains=(shard.name, "truncated"))


def test_index_names_missing_shard(tmp_path, dst):
    src = write_sharded_source(tmp_path / "src", model_for("2b"))
    shard = sorted(src.glob("diffusion_pytorch_model-*.safetensors"))[1]
    shard.unlink()
    conversion_error(src, dst, contains=(INDEX_NAME, shard.name, "missing"))


def test_index_lists_tensor_in_wrong_shard(tmp_path, dst):
    src = write_sharded_source(tmp_path / "src", model_for("2b"))
    index = json.loads((src / INDEX_NAME).read_text())
    weight_map = index["weight_map"]
    key = "proj_out.weight"
    wrong = next(f for f in sorted(set(weight_map.values())) if f != weight_map[key])
    weight_map[key] = wrong
    (src / INDEX_NAME).write_text(json.dumps(index))
    conversion_error(src, dst, contains=(wrong, key, "does not contain"))


@pytest.mark.parametrize("text", ['{"weight_map": {', '{"metadata": {}}', '{"weight_map": ["a.safetensors"]}',
                                  '{"weight_map": {"proj_out.weight": 3}}', '[]'],
                         ids=["bad-json", "no-weight-map", "list", "non-string-file", "not-an-object"])
def test_invalid_index(tmp_path, dst, text):
    src = write_sharded_source(tmp_path / "src", model_for("2b"))
    (src / INDEX_NAME).write_text(text)
    conversion_error(src, dst, contains=(INDEX_NAME, "index"))


def test_no_weights(tmp_path, dst):
    src = tmp_path / "src"
    src.mkdir()
    model_for("2b").save_config(src)
    conversion_error(src, dst, contains=(WEIGHTS_NAME, INDEX_NAME, str(src)))


class _Trap:
    """Unpickling this creates a file: proof that somebody ran pickle on it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_weights_refused(tmp_path, dst):
    model = model_for("2b")
    src = tmp_path / "src"
    model.save_pretrained(src, safe_serialization=False)
    assert (src / "diffusion_pytorch_model.bin").exists() and not list(src.glob("*.safetensors"))
    conversion_error(src, dst, contains=("pickle", ".bin", str(src)))

    # a hostile pickle is not opened either
    marker = tmp_path / "unpickled"
    (src / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    conversion_error(src, dst, contains=("pickle",))
    assert not marker.exists(), "the converter unpickled a .bin file"


# --------------------------------------------------------------------------------------------------------------
# The destination: refusing to overwrite, atomic writes
# --------------------------------------------------------------------------------------------------------------
def test_destination_exists(tmp_path, dst):
    src_a = write_single_file_source(tmp_path / "a", model_for("2b", seed=0))
    src_b = write_single_file_source(tmp_path / "b", model_for("2b", seed=1))
    convert.convert_checkpoint(src_a, dst, dtype="fp32", progress=False)
    before = (dst / INFO_NAME).read_text()

    with pytest.raises(CheckpointError, match="already exists") as info:
        convert.convert_checkpoint(src_b, dst, dtype="fp32", progress=False)
    assert str(dst) in str(info.value)
    assert (dst / INFO_NAME).read_text() == before
    assert leftovers(dst) == []

    convert.convert_checkpoint(src_b, dst, dtype="fp32", overwrite=True, progress=False)
    assert json.loads((dst / INFO_NAME).read_text())["converted_from"] == str(src_b.absolute())
    got = np.asarray(params_of(load_checkpoint(dst))["proj_out"]["weight"])
    np.testing.assert_array_equal(got, state_dict_numpy(model_for("2b", seed=1))["proj_out.weight"])
    assert leftovers(dst) == []


def test_destination_not_a_checkpoint_is_kept(tmp_path, dst):
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    with pytest.raises(CheckpointError, match="already exists"):
        convert.convert_checkpoint(src, dst, progress=False)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    assert leftovers(dst) == []


def test_failed_overwrite_keeps_old_checkpoint(tmp_path, dst):
    model = model_for("2b")
    src = write_single_file_source(tmp_path / "src", model)
    convert.convert_checkpoint(src, dst, dtype="fp32", progress=False)
    before = (dst / INFO_NAME).read_text()
    sd = state_dict_numpy(model)
    del sd["proj_out.bias"]
    bad = write_single_file_source(tmp_path / "bad", model, sd)
    with pytest.raises(CheckpointError, match="missing tensor proj_out.bias"):
        convert.convert_checkpoint(bad, dst, overwrite=True, progress=False)
    assert (dst / INFO_NAME).read_text() == before
    assert leftovers(dst) == []
    np.testing.assert_array_equal(np.asarray(params_of(load_checkpoint(dst))["proj_out"]["bias"]),
                                  state_dict_numpy(model)["proj_out.bias"])


class _Interrupt(BaseException):
    """Stands in for KeyboardInterrupt / SystemExit, which are not Exceptions."""


@pytest.mark.parametrize("error", [OSError("disk full"), _Interrupt()], ids=["OSError", "BaseException"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_before_commit_leaves_nothing(tmp_path, dst, error, overwrite):
    model = model_for("2b")
    cfg = config_of(model)
    sd = state_dict_numpy(model)
    params = convert.convert_tensors(cfg, list(sd), lambda k: sd[k].shape, sd.__getitem__, "fp32")
    if overwrite:
        save_checkpoint(dst, cfg, params)
        before = (dst / INFO_NAME).read_text()
    seen = []

    def fail(tmp):
        partial = [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.partial-")]
        assert partial == [tmp]
        seen.append(sorted(q.name for q in partial[0].iterdir()) if len(partial) == 1 else partial)
        raise error

    with pytest.raises(type(error)):
        save_checkpoint(dst, cfg, params, overwrite=overwrite, before_commit=fail)
    assert seen == [sorted([INFO_NAME, "state"])], "before_commit should run once the checkpoint is fully written"
    assert leftovers(dst) == []
    if overwrite:
        assert (dst / INFO_NAME).read_text() == before
    else:
        assert_nothing_written(dst)


def test_save_checkpoint_rejects_wrong_tree(tmp_path, dst):
    model = model_for("2b")
    cfg = config_of(model)
    sd = state_dict_numpy(model)
    params = convert.convert_tensors(cfg, list(sd), lambda k: sd[k].shape, sd.__getitem__, "fp32")
    del params["proj_out"]["bias"]
    params["norm_final"]["weight"] = params["norm_final"]["weight"][:-1]
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(dst, cfg, params)
    message = str(info.value)
    assert "missing parameter proj_out.bias (expected shape (16,))" in message
    assert "norm_final.weight: expected shape (32,), found (31,)" in message
    assert_nothing_written(dst)


# --------------------------------------------------------------------------------------------------------------
# Loading something that is not a checkpoint
# --------------------------------------------------------------------------------------------------------------
def test_load_not_a_checkpoint(tmp_path):
    src = write_single_file_source(tmp_path / "transformer", model_for("2b"))
    for path in (src, tmp_path / "missing"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and INFO_NAME in str(info.value)


def test_load_damaged_checkpoint(tmp_path, bf16_checkpoint):
    good, _ = bf16_checkpoint

    bad_info = tmp_path / "bad-info"
    shutil.copytree(good, bad_info)
    (bad_info / INFO_NAME).write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad_info)

    other_format = tmp_path / "other-format"
    shutil.copytree(good, other_format)
    info = json.loads((other_format / INFO_NAME).read_text())
    info["format"] = "something-else/7"
    (other_format / INFO_NAME).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="something-else/7"):
        load_checkpoint(other_format)

    no_state = tmp_path / "no-state"
    shutil.copytree(good, no_state)
    shutil.rmtree(no_state / "state")
    with pytest.raises(CheckpointError, match=r"cannot restore parameter \S+ \(FileNotFoundError"):
        load_checkpoint(no_state)


def test_existing_destination_is_refused_before_reading_the_source(tmp_path, dst):
    """A corrupt source is never read when the destination blocks the conversion anyway."""
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    (src / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    dst.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="already exists"):
        convert.convert_checkpoint(src, dst, progress=False)


def test_config_that_is_not_an_object(tmp_path, dst):
    src = write_single_file_source(tmp_path / "src", model_for("2b"))
    (src / "config.json").write_text("[]")
    conversion_error(src, dst, ConfigError, contains=("JSON object", "list"))


def test_save_checkpoint_rejects_mixed_dtypes(tmp_path, dst):
    model = model_for("2b")
    sd = state_dict_numpy(model)
    params = convert.convert_tensors(config_of(model), list(sd), lambda k: sd[k].shape, sd.__getitem__, "fp32")
    params["proj_out"]["bias"] = params["proj_out"]["bias"].astype(np.float16)
    with pytest.raises(CheckpointError, match="share one dtype"):
        save_checkpoint(dst, config_of(model), params)
    assert_nothing_written(dst)


def test_load_names_a_missing_or_mismatched_leaf(tmp_path, bf16_checkpoint):
    good, _ = bf16_checkpoint
    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    shutil.rmtree(damaged / "state" / "transformer_blocks.attn1.to_k.weight")
    with pytest.raises(CheckpointError, match=r"cannot restore parameter transformer_blocks\.attn1\.to_k\.weight"):
        load_checkpoint(damaged)

    info = json.loads((good / INFO_NAME).read_text())
    info["config"]["num_layers"] = 3  # the config no longer matches the stored (2-layer) parameters
    (damaged / INFO_NAME).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"parameter transformer_blocks\.\S+ has shape \(2, .*expects \(3, "):
        load_checkpoint(damaged)
