"""What an evaluation of a trained run does: samples, distances, held-out NLL, FID files."""

from __future__ import annotations

import dataclasses

from diffusion_lv import checks
from diffusion_lv.likelihood import LikelihoodConfig

EVAL_PARAMS = ("ema", "raw")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 8192
    sample_batch_size: int = 0  # samples per compiled sampler call; 0: all in one call
    num_projections: int = 256
    repeats: int = 4
    params: str = "ema"  # "ema" (the first EMA decay unless ema_decay says which) or "raw"
    ema_decay: float | None = None
    nll_examples: int = 0  # 0: no NLL
    nll_batch_size: int = 256
    likelihood: LikelihoodConfig = LikelihoodConfig()  # solver, divergence, dequantisation
    checkpoint_step: int | None = None  # None: the latest
    seed: int = 0
    inception_weights: str = ""  # FID Inception weights file; "": no FID
    fid_reference: str = ""  # FID statistics .npz; "": computed from the data set, cached

    def __post_init__(self):
        checks.number("num_samples", self.num_samples, lo=2, integer=True)
        checks.number("sample_batch_size", self.sample_batch_size, lo=0, integer=True)
        checks.number("num_projections", self.num_projections, lo=1, integer=True)
        checks.number("repeats", self.repeats, lo=1, integer=True)
        checks.choice("params", self.params, EVAL_PARAMS)
        checks.number("ema_decay", self.ema_decay, optional=True)
        checks.number("nll_examples", self.nll_examples, lo=0, integer=True)
        checks.number("nll_batch_size", self.nll_batch_size, lo=1, integer=True)
        checks.number("checkpoint_step", self.checkpoint_step, lo=0, integer=True, optional=True)
        checks.number("seed", self.seed, integer=True)
        for name in ("inception_weights", "fid_reference"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name}={value!r} is not valid; valid: a path or ''")
