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


def correlated_gaussian(dim: int, length_scale: float = 3.0, nugget: float = 0.01):
    """One Gaussian with a smooth stationary covariance ``exp(-(i-j)^2 / (2 l^2)) + nugget I``
    over the coordinates (laid out on a line, or read as a square image): neighbours are
    strongly correlated, so a masked coordinate is well predicted by the known ones."""
    idx = np.arange(dim, dtype=np.float64)
    cov = np.exp(-0.5 * np.square((idx[:, None] - idx[None]) / length_scale))
    return GaussianMixture.from_covariances([1.0], [np.zeros(dim)], [cov + nugget * np.eye(dim)])


# -- exact conditionals (closed forms, float64 numpy) ---------------------------------------
#
# A Gaussian mixture stays a Gaussian mixture under conditioning: each component is conditioned
# as a Gaussian (Schur complement) and its weight is multiplied by the evidence it gives the
# observation. Both functions return a plain GaussianMixture, so its samples, moments and scores
# serve as the exact reference of a conditional sampler.


def _covariances(gm: GaussianMixture) -> np.ndarray:
    vecs, lam = np.asarray(gm.eigvecs, np.float64), np.asarray(gm.eigvals, np.float64)
    return np.einsum("kij,kj,klj->kil", vecs, lam, vecs)


def _log_gaussian(y: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, y - mean)
    return float(
        -0.5 * white @ white - np.log(np.diag(chol)).sum() - 0.5 * len(y) * math.log(2 * math.pi)
    )


def _conditioned(gm, evidence, means, covs) -> GaussianMixture:
    log_w = np.log(np.asarray(gm.weights, np.float64)) + np.asarray(evidence)
    weights = np.exp(log_w - log_w.max())
    # Components with no posterior mass are dropped: below 1e-30 of the largest weight they are
    # below float64 resolution, and in float32 their weight would underflow to 0 (log -> -inf).
    keep = weights > 1e-30
    return GaussianMixture.from_covariances(weights[keep], means[keep], covs[keep])


def condition(gm: GaussianMixture, mask, values) -> GaussianMixture:
    """``p(x_U | x_K = values_K)``: the exact conditional on the unknown coordinates.

    ``mask`` (bool, ``(dim,)``) is True on the known coordinates K; ``values`` is ``(dim,)`` (its
    entries off K are ignored) or ``(|K|,)``. The result lives on the ``dim - |K|`` unknown
    coordinates, in their original order. Each component's known block must be non-singular.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (gm.dim,):
        raise ValueError(
            f"mask must be a bool array of shape ({gm.dim},), got {mask.dtype} {mask.shape}"
        )
    if mask.all() or not mask.any():
        raise ValueError(f"mask must know some but not all of the {gm.dim} coordinates")
    values = np.asarray(values, np.float64)
    y = values[mask] if values.shape == (gm.dim,) else values
    if y.shape != (int(mask.sum()),):
        raise ValueError(
            f"values must have shape ({gm.dim},) or ({int(mask.sum())},), got {values.shape}"
        )
    known, unknown = np.flatnonzero(mask), np.flatnonzero(~mask)
    evidence, means, covs = [], [], []
    for mu, cov in zip(np.asarray(gm.means, np.float64), _covariances(gm), strict=True):
        c_kk = cov[np.ix_(known, known)]
        c_uk = cov[np.ix_(unknown, known)]
        gain = np.linalg.solve(c_kk, c_uk.T).T  # C_UK C_KK^-1
        evidence.append(_log_gaussian(y, mu[known], c_kk))
        means.append(mu[unknown] + gain @ (y - mu[known]))
        covs.append(cov[np.ix_(unknown, unknown)] - gain @ c_uk.T)
    return _conditioned(gm, evidence, np.stack(means), np.stack(covs))


def linear_gaussian_posterior(gm: GaussianMixture, matrix, y, noise_std: float) -> GaussianMixture:
    """``p(x | y)`` for the observation ``y = matrix @ x + noise_std * N(0, I)``: the exact
    posterior over all ``dim`` coordinates (Kalman update of each component; weights times
    ``N(y; A mu_k, A C_k A^T + s^2 I)``). ``noise_std`` must be > 0 unless ``A C_k A^T`` is
    non-singular; ``noise_std -> 0`` with a selection matrix is ``condition``."""
    a = np.asarray(matrix, np.float64)
    y = np.asarray(y, np.float64)
    if a.ndim != 2 or a.shape[1] != gm.dim or y.shape != (a.shape[0],):
        raise ValueError(f"matrix must be (m, {gm.dim}) and y (m,), got {a.shape} and {y.shape}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std={noise_std!r} is not valid; valid: >= 0")
    evidence, means, covs = [], [], []
    for mu, cov in zip(np.asarray(gm.means, np.float64), _covariances(gm), strict=True):
        innovation = a @ cov @ a.T + noise_std**2 * np.eye(a.shape[0])
        gain = np.linalg.solve(innovation, a @ cov).T  # C A^T (A C A^T + s^2 I)^-1
        evidence.append(_log_gaussian(y, a @ mu, innovation))
        means.append(mu + gain @ (y - a @ mu))
        post = cov - gain @ a @ cov
        covs.append(0.5 * (post + post.T))
    return _conditioned(gm, evidence, np.stack(means), np.stack(covs))
