"""diffusers `AutoencoderKLWan` (`vae/` folder) -> sixbit-jax WanVAE (the shared conversion in convert/vae.py; the
RMS-norm gammas keep their [C, 1, 1(, 1)] shape). Wan pipelines are often run with the VAE in float32: pass
dtype="fp32"."""

from __future__ import annotations

from typing import Callable

from convert.vae import VAEFamily, VAETensorSpec, vae_folder
from sixbit_jax.models.vae_wan import WanVAE, WanVAEConfig, abstract_wan_vae_params


def config_hint(cfg: WanVAEConfig, names: list[str], shape_of: Callable[[str], tuple]) -> str | None:
    """Which config.json fields the tensors contradict (a wrong width mis-shapes most tensors)."""
    hints = []

    def out_channels(key):
        return shape_of(key)[0] if key in names else None

    found = out_channels("encoder.conv_in.weight")
    if found is not None and found != cfg.base_dim:
        hints.append(f"the encoder's first conv has {found} channels but base_dim is {cfg.base_dim}")
    found = out_channels("post_quant_conv.weight")
    if found is not None and found != cfg.z_dim:
        hints.append(f"the latents have {found} channels but z_dim is {cfg.z_dim}")
    found = out_channels("decoder.conv_out.weight")
    if found is not None and found != cfg.out_channels:
        hints.append(f"the decoder outputs {found} channels but out_channels is {cfg.out_channels}")
    return "; ".join(hints) + " (config.json)" if hints else None


WAN_VAE = VAEFamily(WanVAEConfig, WanVAE, abstract_wan_vae_params, config_hint)

expected_tensors = WAN_VAE.expected_tensors
converted_vae_leaves = WAN_VAE.converted_leaves
read_vae_config = WAN_VAE.read_config
vae_leaves = WAN_VAE.leaves
vae_from_leaves = WAN_VAE.from_leaves
load_vae = WAN_VAE.load

__all__ = ["WAN_VAE", "VAETensorSpec", "config_hint", "converted_vae_leaves", "expected_tensors", "load_vae",
           "read_vae_config", "vae_folder", "vae_from_leaves", "vae_leaves"]
