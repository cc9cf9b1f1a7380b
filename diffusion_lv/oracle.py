"""The exact model: a Gaussian-mixture data distribution and its closed-form diffusion.

If ``x0 ~ sum_k pi_k N(mu_k, C_k)`` then in canonical (VE) coordinates ``z = x / alpha`` at
noise level ``s = sigma_ve``: ``p_s(z) = sum_k pi_k N(z; mu_k, C_k + s^2 I)``, for every schedule.
Everything (``log p_t``, score, denoiser ``E[x0 | x_t]``, eps, velocity) follows in closed form.
Each covariance is stored by its eigendecomposition ``C_k = U_k diag(lam_k) U_k^T`` so that
``C_k + s^2 I`` is inverted at any ``s`` for the price of a diagonal.

``GaussianMixture.model_fn(schedule, prediction)`` has the call signature of a trained network
``(x, t) -> native prediction``, so samplers, losses and likelihoods are tested against truth.
Data are flattened: ``x`` has shape ``(batch, dim)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_lv import convert
from diffusion_lv.schedules import Schedule, expand_to

Array = jax.Array


@struct.dataclass
class GaussianMixture:
    weights: Array  # (K,)
    means: Array  # (K, D)
    eigvals: Array  # (K, D), eigenvalues of each covariance (>= 0)
    eigvecs: Array  # (K, D, D), columns are eigenvectors

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_covariances(cls, weights, means, covariances) -> GaussianMixture:
        weights = np.asarray(weights, np.float64)
        means = np.asarray(means, np.float64)
        covs = np.asarray(covariances, np.float64)
        if weights.ndim != 1 or means.ndim != 2 or means.shape[0] != weights.shape[0]:
            raise ValueError(
                f"weights must be (K,) and means (K, D); got {weights.shape} and {means.shape}"
            )
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"covariances must have shape {(k, d, d)}, got {covs.shape}")
        if np.any(weights <= 0):
            raise ValueError(f"mixture weights must be positive, got {weights}")
        lam, vecs = np.linalg.eigh(0.5 * (covs + np.swapaxes(covs, -1, -2)))
        if np.any(lam < -1e-10 * np.abs(lam).max(initial=1.0)):
            raise ValueError(f"covariances must be positive semi-definite, eigenvalues {lam}")
        return cls._make(weights / weights.sum(), means, np.clip(lam, 0.0, None), vecs)

    @classmethod
    def isotropic(cls, weights, means, std) -> GaussianMixture:
        means = np.asarray(means, np.float64)
        k, d = means.shape
        std = np.broadcast_to(np.asarray(std, np.float64), (k,))
        covs = (std**2)[:, None, None] * np.eye(d)[None]
        return cls.from_covariances(weights, means, covs)

    @classmethod
    def diagonal(cls, weights, means, variances) -> GaussianMixture:
        variances = np.asarray(variances, np.float64)
        covs = variances[:, :, None] * np.eye(variances.shape[1])[None]
        return cls.from_covariances(weights, means, covs)

    @classmethod
    def _make(cls, weights, means, eigvals, eigvecs):
        dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        return cls(*(jnp.asarray(a, dtype) for a in (weights, means, eigvals, eigvecs)))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Array:
        return self.weights @ self.means

    def covariance(self) -> Array:
        covs = jnp.einsum("kij,kj,klj->kil", self.eigvecs, self.eigvals, self.eigvecs)
        centred = self.means - self.mean()
        return jnp.einsum("k,kij->ij", self.weights, covs) + jnp.einsum(
            "k,ki,kj->ij", self.weights, centred, centred
        )

    def std(self) -> float:
        """Scalar data standard deviation (root mean per-dimension variance)."""
        # Eager even inside an outer jit that closes over the mixture (a float is wanted).
        with jax.ensure_compile_time_eval():
            return float(jnp.sqrt(jnp.trace(self.covariance()) / self.dim))

    # -- sampling ----------------------------------------------------------------------
    def sample(self, key: Array, n: int) -> Array:
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.num_components, (n,), p=self.weights)
        noise = jax.random.normal(k_noise, (n, self.dim), self.means.dtype)
        scaled = noise * jnp.sqrt(self.eigvals[comp])
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.eigvecs[comp], scaled)

    def sample_marginal(self, key: Array, n: int, t, schedule: Schedule) -> Array:
        """Exact samples of ``p_t`` in the schedule's own coordinates."""
        k_data, k_noise = jax.random.split(key)
        x0 = self.sample(k_data, n)
        alpha, sigma = schedule.alpha(jnp.asarray(t)), schedule.sigma(jnp.asarray(t))
        eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
        return expand_to(alpha, x0) * x0 + expand_to(sigma, x0) * eps

    # -- closed forms in canonical (VE) coordinates -------------------------------------
    def _posterior(self, z: Array, sigma_ve: Array):
        """Component log-joint, rotated residuals and variances at noise level ``sigma_ve``."""
        s2 = expand_to(jnp.square(jnp.asarray(sigma_ve, z.dtype)), z)  # (B, 1) or ()
        resid = z[:, None, :] - self.means[None]  # (B, K, D)
        rotated = jnp.einsum("kji,bkj->bki", self.eigvecs, resid)  # U^T (z - mu)
        var = self.eigvals[None] + s2[..., None]  # (B, K, D)
        log_norm = -0.5 * jnp.sum(
            jnp.square(rotated) / var + jnp.log(2 * math.pi * var), axis=-1
        )
        return jnp.log(self.weights)[None] + log_norm, rotated, var

    def log_prob_ve(self, z: Array, sigma_ve: Array) -> Array:
        log_joint, _, _ = self._posterior(z, sigma_ve)
        return jax.nn.logsumexp(log_joint, axis=-1)

    def score_ve(self, z: Array, sigma_ve: Array) -> Array:
        log_joint, rotated, var = self._posterior(z, sigma_ve)
        resp = jax.nn.softmax(log_joint, axis=-1)
        per_comp = jnp.einsum("kij,bkj->bki", self.eigvecs, rotated / var)
        return -jnp.einsum("bk,bki->bi", resp, per_comp)

    def denoise_ve(self, z: Array, sigma_ve: Array) -> Array:
        """``E[x0 | z]``: responsibilities times each component's Wiener estimate."""
        log_joint, rotated, var = self._posterior(z, sigma_ve)
        resp = jax.nn.softmax(log_joint, axis=-1)
        shrunk = rotated * (self.eigvals[None] / var)
        per_comp = self.means[None] + jnp.einsum("kij,bkj->bki", self.eigvecs, shrunk)
        return jnp.einsum("bk,bki->bi", resp, per_comp)

    # -- in any schedule's coordinates --------------------------------------------------
    def log_prob(self, x: Array, t, schedule: Schedule) -> Array:
        """``log p_t(x)`` in the schedule's coordinates (Jacobian of ``x = alpha z`` included)."""
        alpha = schedule.alpha(jnp.asarray(t))
        z = x / expand_to(alpha, x)
        return self.log_prob_ve(z, schedule.sigma_ve(t)) - self.dim * jnp.log(alpha)

    def denoise(self, x: Array, t, schedule: Schedule) -> Array:
        alpha = schedule.alpha(jnp.asarray(t))
        return self.denoise_ve(x / expand_to(alpha, x), schedule.sigma_ve(t))

    def score(self, x: Array, t, schedule: Schedule) -> Array:
        alpha = expand_to(schedule.alpha(jnp.asarray(t)), x)
        return self.score_ve(x / alpha, schedule.sigma_ve(t)) / alpha

    def predict(self, x: Array, t, schedule: Schedule, prediction: str, sigma_data=None) -> Array:
        """The exact output of kind ``prediction`` (x0, eps, score, velocity, v, edm) at
        ``(x, t)``. ``sigma_data`` (read by ``edm`` only) defaults to the mixture's std."""
        if sigma_data is None:
            sigma_data = self.std() if prediction == "edm" else convert.DEFAULT_SIGMA_DATA
        return convert.from_x0(
            self.denoise(x, t, schedule), prediction, x, t, schedule, sigma_data
        )

    def model_fn(self, schedule: Schedule, prediction: str = "x0", sigma_data=None):
        """A function ``(x, t) -> native output`` with a trained network's call signature."""
        convert.check_prediction(prediction)
        if sigma_data is None and prediction == "edm":
            sigma_data = self.std()

        def model(x, t):
            return self.predict(x, t, schedule, prediction, sigma_data)

        return model

    def ve_denoiser(self):
        """``D(z, sigma_ve)``: the signature samplers use."""
        return self.denoise_ve


# -- standard test problems ---------------------------------------------------------------


def ring(num_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """``num_modes`` equal isotropic Gaussians evenly spaced on a circle (the 'ring8' toy set)."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return GaussianMixture.isotropic(np.ones(num_modes), means, std)


def random_anisotropic(
    seed: int, dim: int, num_modes: int, spread: float = 2.0, eig_range=(0.01, 1.0)
) -> GaussianMixture:
    """A reproducible mixture with random full covariances whose eigenvalues span ``eig_range``."""
    rng = np.random.default_rng(seed)
    means = spread * rng.standard_normal((num_modes, dim)) / np.sqrt(dim) * 2
    covs = []
    for _ in range(num_modes):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        lam = np.exp(rng.uniform(np.log(eig_range[0]), np.log(eig_range[1]), dim))
        covs.append((q * lam) @ q.T)
    weights = rng.uniform(0.5, 1.5, num_modes)
    return GaussianMixture.from_covariances(weights, means, np.stack(covs))
