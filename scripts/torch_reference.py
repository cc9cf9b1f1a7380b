"""The default config's train step written in plain PyTorch (eager), for scripts/bench_train.py.

The same work per update as ``training.step.make_train_step`` with configs/default.py: the
residual MLP (Fourier noise embedding, pre-norm blocks, zero output layer), EDM preconditioning
in VE coordinates with ``sigma_data``, noise levels from the truncated log-normal, the ``edm``
loss weight, per-bucket loss means, Adam with linear warm-up and cosine decay, global-norm
clipping, and each EMA with its ramp-up. Written the way a PyTorch user would (``foreach``
optimiser and EMA updates, one Python call per update); not a script itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierEmbedding(nn.Module):
    def __init__(self, features: int, max_frequency: float):
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(0.25), math.log(max_frequency), features // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, c_noise):
        angles = 2.0 * math.pi * c_noise[:, None] * self.freqs
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, expansion: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)  # flax's epsilon
        self.up = nn.Linear(width, width * expansion)
        self.emb = nn.Linear(width, width * expansion)
        self.down = nn.Linear(width * expansion, width)

    def forward(self, h, emb):
        y = nn.functional.silu(self.up(self.norm(h)) + self.emb(emb))
        return h + self.down(y)


class MLP(nn.Module):
    def __init__(self, dim: int, width: int, num_blocks: int, expansion: int,
                 embedding_features: int, max_frequency: float):
        super().__init__()
        self.fourier = FourierEmbedding(embedding_features, max_frequency)
        self.emb1 = nn.Linear(embedding_features, width)
        self.emb2 = nn.Linear(width, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, expansion) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, c_noise):
        emb = self.emb2(nn.functional.silu(self.emb1(self.fourier(c_noise))))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.norm(h)))


class TrainStep:
    """``step()``: one update on a fresh batch of the ring of 8 Gaussians; returns the loss
    tensor (no host sync, as the JAX loop syncs once per call)."""

    def __init__(self, experiment, batch: int):
        net, model = experiment.network, experiment.parameterization
        loss, optim, training = experiment.loss, experiment.optimizer, experiment.training
        self.batch, self.dim = batch, experiment.data_shape[0]
        self.net = MLP(self.dim, net.width, net.num_blocks, net.expansion,
                       net.embedding_features, net.max_frequency)
        self.sigma_data = float(model.sigma_data)
        schedule = model.schedule
        self.p_mean, self.p_std = loss.time_sampler.p_mean, loss.time_sampler.p_std
        log_lo = math.log(float(schedule.sigma_ve(schedule.t_min)))
        log_hi = math.log(float(schedule.sigma_ve(schedule.t_max)))
        normal = torch.distributions.Normal(0.0, 1.0)
        self.cdf_lo = float(normal.cdf(torch.tensor((log_lo - self.p_mean) / self.p_std)))
        self.cdf_hi = float(normal.cdf(torch.tensor((log_hi - self.p_mean) / self.p_std)))
        self.edges = torch.tensor(training.bucket_edges, dtype=torch.float32)
        self.params = [p for p in self.net.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=optim.learning_rate,
                                    betas=(optim.b1, optim.b2), eps=optim.eps, foreach=True)
        warmup, total = optim.warmup_steps, training.num_steps

        def lr_factor(step):
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor)
        self.clip = optim.grad_clip
        self.decays, self.rampup = training.ema_decays, training.ema_rampup
        self.emas = [[p.detach().clone() for p in self.params] for _ in self.decays]
        self.count = 0
        angles = torch.arange(8) * (2 * math.pi / 8)
        self.modes = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)

    def step(self):
        b = self.batch
        x0 = self.modes[torch.randint(0, 8, (b,))] + 0.1 * torch.randn(b, self.dim)
        u = torch.rand(b)
        z = torch.special.ndtri(self.cdf_lo + (self.cdf_hi - self.cdf_lo) * u)
        sigma = torch.exp(self.p_mean + self.p_std * z)
        x = x0 + sigma[:, None] * torch.randn(b, self.dim)
        sd2, s2 = self.sigma_data**2, sigma**2
        c_skip, c_out = sd2 / (s2 + sd2), sigma * self.sigma_data / torch.sqrt(s2 + sd2)
        c_in = 1.0 / torch.sqrt(s2 + sd2)
        out = self.net(c_in[:, None] * x, torch.log(sigma) / 4.0)
        denoised = c_skip[:, None] * x + c_out[:, None] * out
        weight = (s2 + sd2) / (s2 * sd2)
        per_example = weight * torch.mean(torch.square(denoised - x0), dim=1)
        loss = per_example.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.scheduler.step()
        self.count += 1
        with torch.no_grad():
            for decay, ema in zip(self.decays, self.emas, strict=True):
                if self.rampup > 0:
                    decay = min(decay, 0.5 ** (1.0 / (self.rampup * self.count)))
                torch._foreach_mul_(ema, decay)
                torch._foreach_add_(ema, self.params, alpha=1.0 - decay)
            # The per-noise-level loss means the JAX step also reports.
            bucket = torch.bucketize(sigma, self.edges)
            sums = torch.zeros(len(self.edges) + 1).index_add_(0, bucket, per_example.detach())
            counts = torch.bincount(bucket, minlength=len(self.edges) + 1)
            _ = sums / counts.clamp(min=1)
        return loss
