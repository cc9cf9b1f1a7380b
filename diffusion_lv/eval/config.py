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
    # The reverse-SDE model's bound beside the ODE NLL (same examples and dequantisation):
    # time draws per example, each with its own noise; 0: no bound.
    nll_bound_times: int = 64
    # J(theta) - J*, the ML objective's excess, where the data have an exact denoiser (toy
    # mixtures): fresh draws it is averaged over (also during training, every sample_every);
    # its time draws: nll_bound_times (64 if that is 0). 0: off.
    excess_examples: int = 1024
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
        checks.number("nll_bound_times", self.nll_bound_times, lo=0, integer=True)
        if self.nll_bound_times == 1:
            raise ValueError("nll_bound_times=1 is not valid; valid: 0 (no bound) or >= 2 (the "
                             "Monte Carlo standard error needs two draws)")
        checks.number("excess_examples", self.excess_examples, lo=0, integer=True)
        if self.excess_examples == 1:
            raise ValueError("excess_examples=1 is not valid; valid: 0 (off) or >= 2")
        checks.number("checkpoint_step", self.checkpoint_step, lo=0, integer=True, optional=True)
        checks.number("seed", self.seed, integer=True)
        for name in ("inception_weights", "fid_reference"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name}={value!r} is not valid; valid: a path or ''")
