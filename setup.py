"""diffusion_lv: diffusion models from the Langevin perspective, in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="diffusion_lv",
    version="0.1.0",
    description=(
        "Diffusion models as splits of Langevin dynamics: VP, VE-Karras and rectified "
        "flow as one process, exact conversions, ODE/SDE samplers, one ML objective."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["diffusion_lv", "diffusion_lv.*"]),
    include_package_data=True,
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0",
        "diffrax>=0.6,<0.8",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
        "tensorflow-datasets>=4.9.7,<5",
        # tensorflow-datasets uses it on Python 3.11 without declaring it.
        "importlib_resources>=6",
        "grain>=0.2.10,<0.3",
        "tensorboardX>=2.6",
        "scipy>=1.11",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100"],
        "lint": ["ruff>=0.6"],
        # The viewer of <workdir>/tensorboard: tensorboard --logdir runs
        "viewer": ["tensorboard>=2.16"],
        # NVIDIA GPUs: jaxlib's CUDA plugin and the CUDA/cuDNN wheels, all from PyPI
        # (docs/scale.md, "The device check"); TPU VMs: pip install -U "jax[tpu]".
        "cuda12": ["jax[cuda12]>=0.7,<0.11"],
        "cuda13": ["jax[cuda13]>=0.7,<0.11"],
        # scripts/bench_train.py --torch: the same train step in PyTorch, for the ratio.
        "torch": ["torch>=2.2"],
    },
)
