"""diffusion_lv: diffusion models as splits of Langevin dynamics (JAX/Flax)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``diffusion_lv.load_run`` without importing JAX, flax and the config layer at package
    # import: the loader sits in the post-training layer and is imported on first use.
    if name in ("load_run", "TrainedRun"):
        import importlib

        return getattr(importlib.import_module("diffusion_lv.trained_run"), name)
    raise AttributeError(f"module 'diffusion_lv' has no attribute {name!r}")
