"""The train step written in plain PyTorch (eager), for scripts/bench_train.py --torch.

The same work per update as ``training.step.make_train_step`` with configs/default.py (the
residual MLP: Fourier noise embedding, pre-norm blocks, zero output layer) or a digits config
(the DDPM++ U-Net of models/unet.py, in PyTorch's NCHW layout), EDM preconditioning
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


SKIP_SCALE = math.sqrt(0.5)  # DDPM++'s skip_rescale, models/unet.py's default


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class Attention(nn.Module):
    """Single-head self-attention over the pixels (models/unet.py's ``Attention``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.softmax(torch.einsum("bcq,bck->bqk", q, k) / math.sqrt(c), dim=-1)
        return self.proj(torch.einsum("bqk,bck->bcq", weights, v).reshape(b, c, h, w))


class UNetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_features: int, down=False, up=False,
                 attention=False, skip_scale=SKIP_SCALE):
        super().__init__()
        self.down, self.up, self.skip_scale = down, up, skip_scale
        self.norm0, self.conv0 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb_features, c_out)
        self.norm1, self.conv1 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out or down or up else None
        self.attention = nn.Sequential(group_norm(c_out), Attention(c_out)) if attention else None

    def resample(self, x):
        if self.down:
            return nn.functional.avg_pool2d(x, 2)
        if self.up:
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x, emb):
        h = self.conv0(self.resample(nn.functional.silu(self.norm0(x))))
        h = nn.functional.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(h)
        skip = self.resample(x)
        if self.skip is not None:
            skip = self.skip(skip)
        x = (h + skip) * self.skip_scale
        if self.attention is not None:
            x = (x + self.attention(x)) * self.skip_scale
        return x


class UNet(nn.Module):
    """models/unet.py's DDPM++ layout (positional embedding, no classes, no dropout)."""

    def __init__(self, net, image_shape):
        super().__init__()
        size, _, colors = image_shape
        ch, emb_features = net.channels, net.channels * net.embedding_mult
        self.noise_features = ch * net.noise_mult
        self.map0 = nn.Linear(self.noise_features, emb_features)
        self.map1 = nn.Linear(emb_features, emb_features)
        self.encoder, self.decoder, skips = nn.ModuleList(), nn.ModuleList(), []
        block = lambda c_in, c_out, **kw: UNetBlock(c_in, c_out, emb_features, **kw)
        current = colors
        for level, mult in enumerate(net.channel_mult):
            res = size >> level
            if level == 0:
                self.conv_in = nn.Conv2d(colors, ch, 3, padding=1)
                current = ch
            else:
                self.encoder.append(block(current, current, down=True))
            skips.append(current)
            for _ in range(net.num_blocks):
                self.encoder.append(block(current, ch * mult,
                                          attention=res in net.attn_resolutions))
                current = ch * mult
                skips.append(current)
        last = len(net.channel_mult) - 1
        for level in reversed(range(len(net.channel_mult))):
            res, mult = size >> level, net.channel_mult[level]
            if level == last:
                self.decoder.append(block(current, current, attention=True))
                self.decoder.append(block(current, current))
            else:
                self.decoder.append(block(current, current, up=True))
            for idx in range(net.num_blocks + 1):
                attention = idx == net.num_blocks and res in net.attn_resolutions
                self.decoder.append(block(current + skips.pop(), ch * mult, attention=attention))
                self.decoder[-1].takes_skip = True
                current = ch * mult
        self.norm_out, self.conv_out = group_norm(current), nn.Conv2d(current, colors, 3,
                                                                      padding=1)

    def forward(self, x, c_noise):
        half = self.noise_features // 2
        freqs = (1.0 / 10000.0) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        angles = c_noise[:, None] * freqs
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        emb = nn.functional.silu(self.map1(nn.functional.silu(self.map0(emb))))
        h = self.conv_in(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, emb)
            skips.append(h)
        for block in self.decoder:
            if getattr(block, "takes_skip", False):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


def network_for(experiment) -> nn.Module:
    net, shape = experiment.network, experiment.data_shape
    if len(shape) == 1:
        return MLP(shape[0], net.width, net.num_blocks, net.expansion, net.embedding_features,
                   net.max_frequency)
    return UNet(net, shape)


class TrainStep:
    """``step()``: one update on a fresh batch (the ring of 8 Gaussians for 2-D data, uniform
    pixels for images, as the JAX benchmarks draw them); returns the loss tensor (no host
    sync, as the JAX loop syncs once per call)."""

    def __init__(self, experiment, batch: int):
        model = experiment.parameterization
        loss, optim, training = experiment.loss, experiment.optimizer, experiment.training
        self.batch, self.shape = batch, experiment.data_shape
        self.net = network_for(experiment)
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

    def data(self):
        b = self.batch
        if len(self.shape) == 1:
            return self.modes[torch.randint(0, 8, (b,))] + 0.1 * torch.randn(b, self.shape[0])
        h, w, c = self.shape
        return 2.0 * torch.rand(b, c, h, w) - 1.0

    def step(self):
        x0 = self.data()
        b = x0.shape[0]
        per_pixel = (b,) + (1,) * (x0.ndim - 1)  # broadcast a per-example scale
        u = torch.rand(b)
        z = torch.special.ndtri(self.cdf_lo + (self.cdf_hi - self.cdf_lo) * u)
        sigma = torch.exp(self.p_mean + self.p_std * z)
        x = x0 + sigma.reshape(per_pixel) * torch.randn_like(x0)
        sd2, s2 = self.sigma_data**2, sigma**2
        c_skip, c_out = sd2 / (s2 + sd2), sigma * self.sigma_data / torch.sqrt(s2 + sd2)
        c_in = 1.0 / torch.sqrt(s2 + sd2)
        out = self.net(c_in.reshape(per_pixel) * x, torch.log(sigma) / 4.0)
        denoised = c_skip.reshape(per_pixel) * x + c_out.reshape(per_pixel) * out
        weight = (s2 + sd2) / (s2 * sd2)
        per_example = weight * torch.square(denoised - x0).flatten(1).mean(dim=1)
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
