"""diffusers `AutoencoderKLCogVideoX` (`vae/` folder) -> sixbit-jax CogVideoXVAE (the shared conversion in
convert/vae.py)."""

from __future__ import annotations

from convert.vae import VAEFamily, VAETensorSpec, vae_folder
from sixbit_jax.models.vae_cogvideox import CogVideoXVAE, CogVideoXVAEConfig, abstract_vae_params

COGVIDEOX_VAE = VAEFamily(CogVideoXVAEConfig, CogVideoXVAE, abstract_vae_params)

expected_tensors = COGVIDEOX_VAE.expected_tensors
converted_vae_leaves = COGVIDEOX_VAE.converted_leaves
read_vae_config = COGVIDEOX_VAE.read_config
vae_leaves = COGVIDEOX_VAE.leaves
vae_from_leaves = COGVIDEOX_VAE.from_leaves
load_vae = COGVIDEOX_VAE.load

__all__ = ["COGVIDEOX_VAE", "VAETensorSpec", "converted_vae_leaves", "expected_tensors", "load_vae",
           "read_vae_config", "vae_folder", "vae_from_leaves", "vae_leaves"]
