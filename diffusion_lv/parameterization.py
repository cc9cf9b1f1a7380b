"""How a network becomes a model: inputs it sees, and what its output means.

A network is any ``network(net_input, c_noise) -> output`` (e.g. ``MLP.apply`` with bound
params). A :class:`Parameterization` turns it into a *model* ``model_fn(x, t) -> prediction`` in
the schedule's own coordinates, where ``prediction`` is the configured native output kind (x0,
eps, score, velocity, v or edm; see convert.py). Downstream code (loss, samplers, likelihood)
only ever sees ``model_fn`` together with ``(prediction, schedule, sigma_data)`` and converts
through convert.py, so schedule, output kind, weighting and time sampler are independent choices.

Inputs: the network sees the canonical state ``z = x / alpha`` scaled by EDM's
``c_in = 1 / sqrt(sigma_ve^2 + sigma_data^2)`` (unit variance at every noise level) and
``c_noise = log(sigma_ve) / 4``. Both are fixed invertible functions of ``(x, t)``, so they do not
change what the output predicts. For ``edm`` they are part of the definition; for the other kinds
``scale_input=False`` feeds ``x`` unscaled instead (``c_noise`` is kept: the network needs a
noise level, and ``sigma_ve`` is a function of ``t`` in every schedule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from diffusion_lv import convert
from diffusion_lv.schedules import Schedule, expand_to

Array = jax.Array
Network = Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """A frozen (hashable) description of how a network's output is read.

    schedule: the forward process the model lives in (its time variable and coordinates).
    prediction: the network's native output kind, one of ``convert.PREDICTIONS``.
    sigma_data: data standard deviation used by EDM's preconditioning (and ``c_in``).
    scale_input: feed ``c_in * x / alpha`` (True) or ``x`` (False) to the network.
    """

    schedule: Schedule
    prediction: str = "eps"
    sigma_data: float = convert.DEFAULT_SIGMA_DATA
    scale_input: bool = True

    def __post_init__(self):
        convert.check_prediction(self.prediction, "prediction (network output)")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data={self.sigma_data!r} must be > 0")

    def network_inputs(self, x: Array, t: Array) -> tuple[Array, Array]:
        """``(net_input, c_noise)`` for a state ``x`` at time ``t`` (scalar or ``(batch,)``)."""
        alpha = self.schedule.alpha(t)
        sigma_ve = self.schedule.sigma_ve(t)
        _, _, c_in, c_noise = convert.edm_preconditioning(sigma_ve, self.sigma_data)
        if self.scale_input or self.prediction == "edm":
            x = x * expand_to(c_in / alpha, x)
        return x, c_noise.astype(x.dtype)

    def model_fn(self, network: Network) -> Callable[[Array, Array], Array]:
        """``(x, t) -> native prediction``: the trained-network signature of convert.py."""

        def model(x, t):
            return network(*self.network_inputs(x, t))

        return model

    def model_apply(self, apply_fn: Callable) -> Callable[[object, Array, Array], Array]:
        """``(params, x, t) -> native prediction`` from a Flax ``apply``: the model with its
        parameters as an argument (what ``likelihood.make_likelihood_fn`` takes)."""

        def apply(params, x, t):
            return self.model_fn(bind(apply_fn, params))(x, t)

        return apply

    def ve_denoiser(self, model_fn: Callable[[Array, Array], Array]):
        """``D(z, sigma_ve)`` in canonical (VE) coordinates of a model function
        ``(x, t) -> native prediction`` (a trained network's ``model_fn`` or the oracle's):
        what every sampler and the likelihood see."""
        return convert.as_ve_denoiser(model_fn, self.prediction, self.schedule, self.sigma_data)

    def denoiser(self, network: Network) -> Callable[[Array, Array], Array]:
        """``D(x, t) = E[x0 | x_t]`` in the schedule's coordinates."""
        return convert.as_denoiser(
            self.model_fn(network), self.prediction, self.schedule, self.sigma_data
        )


def bind(apply_fn: Callable, params) -> Network:
    """A network closure ``(net_input, c_noise) -> output`` from a Flax ``apply`` and params."""
    return lambda net_input, c_noise: apply_fn(params, net_input, c_noise)
