"""The T5 v1.1 / umT5 text encoder and the sentencepiece tokenizer, against transformers live.

Tiny random transformers models are saved with `save_pretrained` (safetensors, single file or sharded) and loaded by
`convert.t5.load_t5_encoder`; the encoder must reproduce transformers' forward pass (fp32 to 1e-5, bf16/fp16 to a
loose bound against the fp32 reference). The relative-position bias table is scaled up and the norm weights
randomised so that a wrong bucket, a missing scale or a mis-mapped layer would move the output well past the
tolerance. The tokenizer is compared with transformers' T5Tokenizer on a sentencepiece model trained here."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import rel_err
from convert.t5 import abstract_params, converted_leaves, expected_tensors, load_t5_encoder, t5_leaves
from sixbit_jax.checkpoint import flat_leaves
from sixbit_jax.errors import CheckpointError, ConfigError, InputError
from sixbit_jax.models.t5 import T5Config, clamp_fp16, relative_position_buckets
from sixbit_jax.tokenizer import JsonTokenizer, SentencePieceTokenizer, load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dropout_rate=0.0)
LENGTH = 150  # > max_distance / 2 apart: the log-spaced and saturated buckets are all used


def _ids() -> np.ndarray:
    """Two rows of random ids with trailing pads (0) after 100 and 37 tokens, and an EOS (1) before them."""
    ids = np.random.default_rng(0).integers(2, TINY["vocab_size"], (2, LENGTH)).astype(np.int32)
    for row, n in enumerate((100, 37)):
        ids[row, n - 1], ids[row, n:] = 1, 0
    return ids


IDS = _ids()
MASK = (IDS != 0).astype(np.int32)


def _randomize(model) -> None:
    """Peaky attention (bias std ~1.8) and norm scales away from 1, so that every part of the math shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.mul_(10.0)
            elif "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))


def _save(model, folder, **kwargs):
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def _reference(model, mask=None) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(IDS, dtype=torch.long),
                    attention_mask=None if mask is None else torch.tensor(mask)).last_hidden_state
    return out.float().numpy()


@nnx.jit
def _encode(encoder, ids, mask):
    return encoder(ids, mask).astype(jnp.float32)


def _run(encoder, mask=None) -> np.ndarray:
    return np.asarray(_encode(encoder, jnp.asarray(IDS), None if mask is None else jnp.asarray(mask)))


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """(folder, transformers fp32 T5EncoderModel) of the tiny T5."""
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(transformers.T5Config(**TINY)).eval()
    _randomize(model)
    return _save(model, tmp_path_factory.mktemp("t5")), model


@pytest.fixture(scope="module")
def t5_fp32(t5):
    return load_t5_encoder(t5[0], dtype="fp32")


@pytest.fixture(scope="module")
def umt5(tmp_path_factory):
    torch.manual_seed(1)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**TINY)).eval()
    _randomize(model)
    return _save(model, tmp_path_factory.mktemp("umt5")), model


def _copy_with(folder, dst, *, drop=(), rename=None, replace=None, config=None):
    """A copy of a single-file text encoder folder with tensors dropped/renamed/replaced or the config changed."""
    tensors = load_file(str(folder / "model.safetensors"))
    tensors = {(rename or {}).get(k, k): v for k, v in tensors.items() if k not in drop}
    tensors.update(replace or {})
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"))
    raw = json.loads((folder / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**raw, **(config or {})}))
    return dst


# ----------------------------------------------------------------------------------------------------------------
# Encoder vs transformers
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (32, 17), (64, 256)])
def test_relative_position_buckets_match_transformers(buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    n = 300
    positions = torch.arange(n)
    ref = T5Attention._relative_position_bucket(positions[None, :] - positions[:, None], True, buckets, max_distance)
    np.testing.assert_array_equal(relative_position_buckets(n, buckets, max_distance), ref.numpy())


def test_t5_fp32_matches_transformers(t5, t5_fp32):
    err = rel_err(_run(t5_fp32), _reference(t5[1]))
    assert err < 1e-5, err


def test_t5_attention_mask_matches_transformers(t5, t5_fp32):
    ref = _reference(t5[1], MASK)
    assert rel_err(_run(t5_fp32, MASK), ref) < 1e-5
    assert rel_err(_run(t5_fp32), ref) > 1e-2  # the mask does change the result (it is not silently ignored)


@pytest.mark.parametrize("dtype,residual,bound", [("bf16", None, 4e-2), ("fp16", None, 5e-3),
                                                  ("fp16", "float16", 5e-3)])
def test_t5_half_precision_close_to_fp32(t5, dtype, residual, bound):
    """bf16 and fp16 against the fp32 reference, and no worse than transformers' own model in that dtype: loaded in
    fp16 it keeps `wo` and the residual stream in float32, as ours does by default; `.half()` is pure fp16, as ours
    with an fp16 residual."""
    folder, model = t5
    ref = _reference(model)
    ours = load_t5_encoder(folder, dtype=dtype, residual_dtype=residual)
    assert ours.shared.weight.dtype == {"bf16": jnp.bfloat16, "fp16": jnp.float16}[dtype]
    out = _run(ours)
    if residual is None:
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        theirs = _reference(transformers.T5EncoderModel.from_pretrained(folder, dtype=torch_dtype))
    else:
        theirs = _reference(transformers.T5EncoderModel.from_pretrained(folder).half())
    err, their_err = rel_err(out, ref), rel_err(theirs, ref)
    assert err < bound, (err, their_err)
    assert err < 2 * their_err + 1e-3, (err, their_err)


def test_fp16_clamp_matches_transformers():
    big = float(np.finfo(np.float16).max)
    for values in ([1.0, -70000.0, 3.0], [65000.0, -65504.0, 2.0], [np.inf, 1.0, -np.inf]):
        x = torch.tensor(values, dtype=torch.float16)
        limit = torch.where(torch.isinf(x).any(), big - 1000, big)
        ref = torch.clamp(x, min=-limit, max=limit).numpy()
        np.testing.assert_array_equal(np.asarray(clamp_fp16(jnp.asarray(x.numpy()))), ref)
    assert clamp_fp16(jnp.asarray([np.inf], jnp.float32)).item() == np.inf  # float32/bf16: untouched


def test_umt5_per_layer_bias_matches_transformers(umt5):
    folder, model = umt5
    encoder = load_t5_encoder(folder, dtype="fp32")
    assert encoder.config.per_layer_relative_bias and encoder.relative_attention_bias is None
    assert encoder.block.attention.relative_attention_bias.weight.shape == (3, 32, 4)
    assert rel_err(_run(encoder, MASK), _reference(model, MASK)) < 1e-5


def test_sharded_folder_loads_identically(t5, t5_fp32, tmp_path):
    folder, model = t5
    sharded = _save(model, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists() and not (sharded / "model.safetensors").exists()
    encoder = load_t5_encoder(sharded, dtype="fp32", progress=True)
    single, multi = nnx.to_pure_dict(nnx.state(t5_fp32)), nnx.to_pure_dict(nnx.state(encoder))
    jax.tree.map(np.testing.assert_array_equal, single, multi)


def test_pipeline_folder_finds_text_encoder_and_tokenizer(t5, t5_fp32, spm_folder, tmp_path):
    shutil.copytree(t5[0], tmp_path / "text_encoder")
    shutil.copytree(spm_folder, tmp_path / "tokenizer")
    encoder = load_t5_encoder(tmp_path, dtype="fp32")
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(t5_fp32)),
                 nnx.to_pure_dict(nnx.state(encoder)))
    assert SentencePieceTokenizer.from_folder(tmp_path).encode([""], 3).tolist() == [[1, 0, 0]]


def test_bf16_checkpoint_loads_bit_exactly(t5, tmp_path):
    """Hub text encoders are stored in bf16 (CogVideoX-5B) or fp16: the values must arrive untouched."""
    import copy

    model = copy.deepcopy(t5[1]).to(torch.bfloat16)
    encoder = load_t5_encoder(_save(model, tmp_path / "bf16"), dtype="bf16")
    wo = model.encoder.block[2].layer[1].DenseReluDense.wo.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(encoder.block.ff.wo.weight[2], np.float32), wo)


def test_converted_leaves_cover_the_tree_once(t5):
    cfg, leaves = t5_leaves(t5[0], dtype="bf16")
    paths = [(path, leaf.shape, leaf.dtype) for path, leaf in leaves]
    expected = {path: spec for path, spec in flat_leaves(abstract_params(cfg, "bf16"))}
    assert len(paths) == len(expected) == len({p for p, _, _ in paths})
    for path, shape, dtype in paths:
        assert (shape, dtype) == (expected[path].shape, jnp.dtype(jnp.bfloat16))


def test_conditional_generation_folder_loads_the_encoder(tmp_path):
    """A whole T5ForConditionalGeneration: decoder and lm_head tensors are ignored."""
    torch.manual_seed(2)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY)).eval()
    _randomize(model)
    folder = _save(model, tmp_path / "t5-full")
    encoder = load_t5_encoder(folder, dtype="fp32")
    assert rel_err(_run(encoder), _reference(model.get_encoder())) < 1e-5


@pytest.mark.parametrize("names", [["encoder.embed_tokens.weight"], ["shared.weight", "encoder.embed_tokens.weight"]])
def test_embedding_under_either_name(t5, t5_fp32, tmp_path, names):
    shared = load_file(str(t5[0] / "model.safetensors"))["shared.weight"]
    folder = _copy_with(t5[0], tmp_path / "alias", drop=["shared.weight"], replace={n: shared for n in names})
    np.testing.assert_array_equal(np.asarray(load_t5_encoder(folder, dtype="fp32").shared.weight[...]), shared)


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------
def test_missing_and_misshaped_tensors_are_all_named(t5, tmp_path):
    q = "encoder.block.1.layer.0.SelfAttention.q.weight"
    wo = "encoder.block.2.layer.1.DenseReluDense.wo.weight"
    folder = _copy_with(t5[0], tmp_path / "bad", drop=[q], replace={wo: np.zeros((32, 47), np.float32),
                                                                    "encoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError) as info:
        load_t5_encoder(folder, dtype="fp32")
    message = str(info.value)
    assert "3 problems" in message
    assert f"missing tensor {q} (expected shape (32, 32))" in message
    assert f"tensor {wo}: expected shape (32, 48), found (32, 47)" in message
    assert "unexpected tensor encoder.extra.weight" in message


def test_tied_embedding_with_two_shapes_is_refused(t5, tmp_path):
    folder = _copy_with(t5[0], tmp_path / "tied", replace={"encoder.embed_tokens.weight": np.zeros((65, 32),
                                                                                                   np.float32)})
    with pytest.raises(CheckpointError, match="tied embedding is stored twice with different shapes"):
        load_t5_encoder(folder)


def test_t5_checkpoint_with_umt5_config_names_the_missing_tables(t5, tmp_path):
    folder = _copy_with(t5[0], tmp_path / "as-umt5", config={"model_type": "umt5"})
    with pytest.raises(CheckpointError, match="missing tensor encoder.block.1.layer.0.SelfAttention."
                                              "relative_attention_bias.weight"):
        load_t5_encoder(folder)


def test_pickle_only_folder_is_refused(t5, tmp_path):
    folder = tmp_path / "pickle"
    folder.mkdir()
    shutil.copy(t5[0] / "config.json", folder / "config.json")
    torch.save(t5[1].state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_t5_encoder(folder)


@pytest.mark.parametrize("change,match", [
    ({"feed_forward_proj": "relu"}, "feed_forward_proj='relu'"),
    ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj='gated-silu'"),
    ({"is_decoder": True}, "is_decoder"),
    ({"model_type": "bert"}, "model_type 'bert'"),
    ({"d_model": 0}, "d_model must be a positive integer"),
])
def test_unsupported_config_is_named(t5, tmp_path, change, match):
    folder = _copy_with(t5[0], tmp_path / "cfg", config=change)
    with pytest.raises(ConfigError, match=match):
        load_t5_encoder(folder)


def test_config_reads_transformers_json_and_round_trips():
    cfg = T5Config.from_dict({"architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": 4096, "d_kv": 64,
                              "num_heads": 64, "d_ff": 10240, "num_layers": 24, "vocab_size": 32128,
                              "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1})
    assert cfg == T5Config() and not cfg.per_layer_relative_bias
    umt5 = T5Config.from_dict({**cfg.to_dict(), "model_type": "umt5", "vocab_size": 256384})
    assert umt5.per_layer_relative_bias and T5Config.from_dict(umt5.to_dict()) == umt5
    assert len(expected_tensors(cfg)) == 3 + 24 * 9 and len(expected_tensors(umt5)) == 2 + 24 * 10
    with pytest.raises(ConfigError, match="missing d_ff, num_layers"):
        T5Config.from_dict({"d_model": 8, "d_kv": 2, "num_heads": 4, "vocab_size": 10})


def test_bad_inputs_are_named(t5_fp32):
    with pytest.raises(InputError, match=r"\[batch, length\]"):
        t5_fp32(np.zeros((4,), np.int32))
    with pytest.raises(InputError, match="token ids must be in"):
        t5_fp32(np.full((1, 4), 64, np.int32))
    with pytest.raises(InputError, match="attention_mask shape"):
        t5_fp32(np.zeros((1, 4), np.int32), np.ones((1, 5), np.int32))


def test_converted_leaves_check_before_reading(t5):
    """Names and shapes are checked before the first tensor is read."""
    cfg = T5Config.from_json(t5[0] / "config.json")
    reads = []
    leaves = converted_leaves(cfg, ["shared.weight"], lambda k: (64, 32), reads.append, "fp32")
    with pytest.raises(CheckpointError, match="missing tensor"):
        next(leaves)
    assert reads == []


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer vs transformers' T5Tokenizer
# ----------------------------------------------------------------------------------------------------------------
CORPUS = ["the quick brown fox jumps over the lazy dog", "a red circle moving left on a blue background",
          "Café déjà vu naïve résumé", "hello world, this is a test of the tokenizer!", "numbers 123 456 7890",
          "A panda, dressed in a small red jacket and a tiny hat, sits on a wooden stool in a bamboo forest."]
TEXTS = [
    "a red circle moving left", "", "   lots   of\tspace\n\nhere  ", "  ", "ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ１２３",
    "\u3000ideographic\u3000space", "Café déjà vu, naïve résumé", "e\u0301 combining accent", "a\u00a0b",
    "emoji 🙂 and 漢字 are unknown", "over-long " * 30,
    # transformers splits out special tokens' spellings; so do we
    "hello </s> world", "x<extra_id_0>y", "a  <extra_id_99>  b", "<extra_id_9>9 <extra_id_10>",
    "<extra_id_100> is not special", "<pad>z<unk>",
    "ab</s></s>",
]
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=100,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


@pytest.mark.parametrize("extra_ids, stored", [(None, "spiece"), (10, "spiece"), (10, "json")])
def test_tokenizer_matches_transformers(spm_folder, tmp_path, extra_ids, stored):
    """extra_ids: None = a bare spiece.model (transformers' default of 100 sentinels), else tokenizer_config.json's.
    stored: the folder holds spiece.model (the hub's folders), or only the tokenizer.json that transformers 5's
    save_pretrained writes."""
    if extra_ids is not None:
        spm_folder = Path(shutil.copytree(spm_folder, tmp_path / "tokenizer"))
        (spm_folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": extra_ids}))
    reference = transformers.T5Tokenizer.from_pretrained(spm_folder)
    ref = reference(TEXTS, padding="max_length", max_length=MAX_LENGTH, truncation=True, add_special_tokens=True)
    if stored == "json":
        reference.save_pretrained(tmp_path / "saved")
        assert not (tmp_path / "saved" / "spiece.model").exists()
        spm_folder = tmp_path / "saved"
    tokenizer = load_tokenizer(spm_folder)
    assert isinstance(tokenizer, JsonTokenizer if stored == "json" else SentencePieceTokenizer)
    ids, mask = tokenizer.encode_with_mask(TEXTS, MAX_LENGTH)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == (len(TEXTS), MAX_LENGTH)
    for text, row, ref_row in zip(TEXTS, ids.tolist(), ref["input_ids"]):
        assert row == ref_row, f"{text!r}: {row} != {ref_row}"
    np.testing.assert_array_equal(mask, np.asarray(ref["attention_mask"]))
    np.testing.assert_array_equal(tokenizer.encode(TEXTS, MAX_LENGTH), ids)
    assert ids[1].tolist() == [1] + [0] * (MAX_LENGTH - 1)  # "" -> EOS, pads
    assert ids[10, -1] == 1 and mask[10].all()  # truncated: the last slot is EOS
    assert tokenizer.vocab_size == len(transformers.T5Tokenizer.from_pretrained(spm_folder))


def test_tokenizer_folder_errors(spm_folder, tmp_path):
    with pytest.raises(CheckpointError, match="no spiece.model or tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a readable tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "spiece.model").write_bytes((spm_folder / "spiece.model").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable sentencepiece model"):
        SentencePieceTokenizer.from_folder(tmp_path)
    with pytest.raises(InputError, match="list of strings"):
        SentencePieceTokenizer.from_folder(spm_folder).encode("one string", 8)
