"""Typed model configuration. Field names mirror diffusers' `transformer/config.json`, so a diffusers config file
and our `configs/*.json` are the same document."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sixbit_jax.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def read_json(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The JSON object in `path`; a ConfigError naming `what` and the file when it is missing, not valid JSON or
    not an object. Every config reader (models, schedulers) goes through here."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object; got {type(raw).__name__}")
    return raw


def check_diffusers_config(raw: Any, class_name: str, unsupported: dict[str, tuple[Any, str]],
                           what: str = "model") -> None:
    """What every diffusers config reader checks first: a JSON object, of the expected `_class_name` (absent means
    expected), with no key set to a value this port does not implement (`unsupported`: key -> (the one supported
    value, what another value would need)). ConfigError naming the problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a {what} config must be a JSON object; got {type(raw).__name__}")
    for key, (supported, feature) in unsupported.items():
        if key in raw and raw[key] != supported:
            prefix = "" if what == "model" else f"{what} "
            raise ConfigError(f"unsupported {prefix}config: {key}={raw[key]!r} ({feature} is not implemented)")
    found = raw.get("_class_name", class_name)
    if found != class_name:
        raise ConfigError(f"unsupported {what} class {found!r}: expected {class_name}")


@dataclasses.dataclass(frozen=True)
class CogVideoXConfig:
    """CogVideoX transformer: 1.0 (2B: 3D sincos positions; 5B: 3D RoPE) and 1.5 (`patch_size_t` 2: patches of two
    latent frames through a Linear embedding, RoPE on the "slice" grid)."""

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 30
    text_embed_dim: int = 4096
    max_text_seq_length: int = 226
    time_embed_dim: int = 512
    patch_size: int = 2
    patch_size_t: int | None = None  # CogVideoX 1.5: latent frames per patch (None: 1.0, one frame per patch)
    patch_bias: bool = True  # 1.0's patch Conv2d bias (1.5's Linear always has one)
    use_learned_positional_embeddings: bool = False  # CogVideoX-5b-I2V: a learned [text + video tokens, D] table
    ofs_embed_dim: int | None = None  # CogVideoX1.5-5B-I2V: the "ofs" embedding added to the time embedding
    sample_frames: int = 49  # pixel frames; latent frames = (sample_frames - 1) // temporal_compression_ratio + 1
    sample_height: int = 60  # latent height
    sample_width: int = 90  # latent width
    temporal_compression_ratio: int = 4
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    norm_eps: float = 1e-5
    freq_shift: int = 0
    flip_sin_to_cos: bool = True

    def __post_init__(self):
        if self.inner_dim % 16:
            raise ConfigError(f"inner dim {self.inner_dim} must be a multiple of 16 (3D sincos positions split it)")
        if self.use_rotary_positional_embeddings and self.attention_head_dim % 8:
            raise ConfigError(f"attention_head_dim {self.attention_head_dim} must be a multiple of 8 for 3D RoPE")
        if self.patch_size_t is not None:
            if self.patch_size_t < 1:
                raise ConfigError(f"patch_size_t must be a positive number of latent frames; got {self.patch_size_t}")
            if not self.use_rotary_positional_embeddings:
                raise ConfigError("patch_size_t (CogVideoX 1.5) is implemented with 3D RoPE only "
                                  "(use_rotary_positional_embeddings=true)")
        if self.ofs_embed_dim is not None and self.ofs_embed_dim != self.time_embed_dim:
            raise ConfigError(f"ofs_embed_dim {self.ofs_embed_dim} must equal time_embed_dim {self.time_embed_dim} "
                              f"(the ofs embedding is added to the time embedding)")
        if self.patch_size_t is None and not self.patch_bias:
            raise ConfigError("unsupported config: patch_bias=false (a CogVideoX 1.0 patch embedding without bias "
                              "is not implemented)")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def flavour(self) -> str:
        return "5b" if self.use_rotary_positional_embeddings else "2b"

    @property
    def image_conditioned(self) -> bool:
        """Image-to-video checkpoints take the image latents concatenated to the noise on channels."""
        return self.in_channels == 2 * self.out_channels

    @property
    def frames_per_patch(self) -> int:
        return self.patch_size_t or 1

    @property
    def patch_volume(self) -> int:
        """Latent elements of one channel in one video token."""
        return self.frames_per_patch * self.patch_size**2

    def video_tokens(self, latent_frames: int, latent_height: int, latent_width: int) -> int:
        return (latent_frames // self.frames_per_patch) * (latent_height // self.patch_size) * (
            latent_width // self.patch_size)

    def latent_frames(self, pixel_frames: int) -> int:
        return (pixel_frames - 1) // self.temporal_compression_ratio + 1

    def frame_padding(self, pixel_frames: int) -> int:
        """Latent frames CogVideoX 1.5's pipeline puts in front (and drops before decoding) so that the latent frames
        fill whole temporal patches; 0 for 1.0."""
        return -self.latent_frames(pixel_frames) % self.frames_per_patch

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "CogVideoXTransformer3DModel", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "CogVideoXConfig":
        """Accepts diffusers' transformer config.json. Values this port does not implement raise ConfigError;
        keys that only concern training or other pipelines are ignored."""
        check_diffusers_config(raw, "CogVideoXTransformer3DModel", {
            "activation_fn": ("gelu-approximate", "activations other than gelu-approximate"),
            "timestep_activation_fn": ("silu", "timestep activations other than silu"),
            "norm_elementwise_affine": (True, "non-affine norms"),
            "attention_bias": (True, "attention projections without bias"),
        })
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields}
        for key, value in kwargs.items():
            if (value is None and key not in ("patch_size_t", "ofs_embed_dim")) or isinstance(value, (dict, list)):
                raise ConfigError(f"config field {key} has an invalid value {value!r}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "CogVideoXConfig":
        return cls.from_dict(read_json(path))

    @classmethod
    def named(cls, name: str) -> "CogVideoXConfig":
        """A CogVideoX config shipped in `configs/`, e.g. 'cogvideox-2b' or 'cogvideox-5b'."""
        cfg = named_config(name)
        if not isinstance(cfg, cls):
            raise ConfigError(f"config {name!r} is not a CogVideoX transformer")
        return cfg


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Wan2.1 / 2.2 text-to-video transformer (`WanTransformer3DModel`; 1.3B: 12 heads, 30 layers; 14B: 40 heads,
    40 layers; heads of 128)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self):
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError(f"patch_size must be three positive sizes (t, h, w); got {self.patch_size!r}")
        if self.attention_head_dim % 2:
            raise ConfigError(f"attention_head_dim {self.attention_head_dim} must be even for RoPE")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def image_conditioned(self) -> bool:
        """Image-to-video models concatenate image latents on channels (Wan's I2V is not implemented yet)."""
        return self.in_channels != self.out_channels

    @property
    def text_embed_dim(self) -> int:
        """The text features a forward takes (CogVideoXConfig's name for it, which the shared code reads)."""
        return self.text_dim

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "WanTransformer3DModel", **dataclasses.asdict(self),
                "patch_size": list(self.patch_size)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "WanConfig":
        """Accepts diffusers' transformer config.json; values this port does not implement raise ConfigError."""
        check_diffusers_config(raw, "WanTransformer3DModel", {
            "image_dim": (None, "image-to-video (CLIP image embeddings)"),
            "added_kv_proj_dim": (None, "image-to-video cross-attention"),
            "pos_embed_seq_len": (None, "first-last-frame image positions"),
            "qk_norm": ("rms_norm_across_heads", "q/k norms other than rms_norm_across_heads"),
        })
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields}
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(kwargs["patch_size"])
        return cls(**kwargs)

    @classmethod
    def from_original(cls, raw: dict[str, Any]) -> "WanConfig":
        """The original Wan-Video checkpoint's config.json (`WanModel`: dim, ffn_dim, num_heads, in_dim, ...). The
        released files do not store the patch size and text width (their code's defaults apply, as here), nor the
        q/k norm and cross-attention norm, which are always on."""
        check_diffusers_config(raw, "WanModel", {
            "model_type": ("t2v", "image-to-video and other Wan variants"),
            "window_size": ([-1, -1], "local attention windows"),
        })
        try:
            dim, heads = int(raw["dim"]), int(raw["num_heads"])
            if dim % heads:
                raise ConfigError(f"dim {dim} is not a multiple of num_heads {heads}")
            return cls(num_attention_heads=heads, attention_head_dim=dim // heads, ffn_dim=int(raw["ffn_dim"]),
                       num_layers=int(raw["num_layers"]), in_channels=int(raw.get("in_dim", 16)),
                       out_channels=int(raw.get("out_dim", 16)), freq_dim=int(raw.get("freq_dim", 256)),
                       eps=float(raw.get("eps", 1e-6)), text_dim=int(raw.get("text_dim", 4096)),
                       patch_size=tuple(raw.get("patch_size", (1, 2, 2))))
        except KeyError as e:
            raise ConfigError(f"the original Wan config has no {e.args[0]!r}") from None


# A transformer config.json's `_class_name` -> the reader of that family's config: the families this port implements
TRANSFORMER_CONFIGS = {"CogVideoXTransformer3DModel": CogVideoXConfig.from_dict,
                       "WanTransformer3DModel": WanConfig.from_dict, "WanModel": WanConfig.from_original}


def transformer_config(raw: Any, where: str = "config") -> "CogVideoXConfig | WanConfig":
    """A diffusers transformer config.json of any implemented family (by its `_class_name`; none means CogVideoX,
    as checkpoints written before Wan landed)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a transformer config must be a JSON object; got {type(raw).__name__}")
    name = raw.get("_class_name", "CogVideoXTransformer3DModel")
    if name not in TRANSFORMER_CONFIGS:
        raise ConfigError(f"{where}: unsupported transformer class {name!r}; implemented: "
                          f"{', '.join(TRANSFORMER_CONFIGS)}")
    return TRANSFORMER_CONFIGS[name](raw)


def named_config(name: str) -> "CogVideoXConfig | WanConfig":
    """A transformer config shipped in `configs/`, e.g. 'cogvideox-2b' or 'wan2.1-1.3b'."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ConfigError(f"unknown config {name!r}; known: {', '.join(known)}")
    return transformer_config(read_json(path), str(path))
