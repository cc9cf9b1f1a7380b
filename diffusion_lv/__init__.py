"""diffusion_lv: diffusion models as splits of Langevin dynamics (JAX/Flax)."""

__version__ = "0.1.0"
