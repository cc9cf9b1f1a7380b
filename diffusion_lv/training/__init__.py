"""Training: state and optimiser (state.py), the data-parallel step (step.py), checkpoints
(checkpoint.py) and the loop (loop.py); console progress is diffusion_lv/progress.py."""

from diffusion_lv.training.checkpoint import Checkpointer, CheckpointError
from diffusion_lv.training.loop import (
    NonFiniteError,
    TrainConfig,
    TrainResult,
    check_batch_divisible,
    train,
)
from diffusion_lv.training.state import (
    LR_DECAYS,
    OPTIMIZERS,
    OptimizerConfig,
    TrainState,
    create_train_state,
    make_optimizer,
)
from diffusion_lv.training.step import make_batch_fn, make_mesh, make_train_step

__all__ = [
    "LR_DECAYS",
    "OPTIMIZERS",
    "CheckpointError",
    "Checkpointer",
    "NonFiniteError",
    "OptimizerConfig",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "check_batch_divisible",
    "create_train_state",
    "make_batch_fn",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "train",
]
