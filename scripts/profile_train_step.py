"""Where the default MLP train step's time goes: its parts timed as separate compiled programs.

Each part runs as a ``lax.scan`` over ``steps_per_call`` updates (how the loop runs the step),
on the config's batch, and is timed warm (best of a few calls; the machine may be shared):

* ``draws``: per-example keys (``fold_in`` of the step key) and each example's time and noise;
* ``loss``: the forward pass and the weighted loss at fixed times and noise;
* ``loss + grad``: the same with its gradient;
* ``optimizer``: global-norm clipping and Adam's update of the parameters, given gradients;
* ``EMA``: the update of every EMA copy (with its ramp-up);
* ``full step``: ``training.step.make_train_step``'s program (all of the above, the finiteness
  guard and the loss buckets, fused by XLA as it sees fit).

The parts' sum against the full step shows what fusion gains; each part's share says what a
change to it could win at most. Also printed: the float32 matmul FLOP/s at the model's layer
shape and the share of it the full step achieves (XLA's FLOP count of one update).

    python scripts/profile_train_step.py [--widths 64,256]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import optax
from bench_train import matmul_flops
from train_timing import best_time, one_update_flops

from diffusion_lv import config_files, losses
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.parameterization import bind
from diffusion_lv.training import state as state_lib
from diffusion_lv.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scanned(body, length: int):
    """``carry -> carry`` after ``length`` applications of ``body``, one compiled scan."""
    return jax.jit(lambda carry: jax.lax.scan(lambda c, _: (body(c), None), carry, None,
                                              length=length)[0])


def profile(experiment) -> tuple[dict[str, float], float]:
    """Seconds per update of each part, and the full step's FLOP/s."""
    batch, k = experiment.training.batch_size, experiment.training.steps_per_call
    model, loss_config = experiment.parameterization, experiment.loss
    apply_fn = experiment.network.apply
    optimizer = state_lib.make_optimizer(experiment.optimizer)
    decays, rampup = experiment.training.ema_decays, experiment.training.ema_rampup
    state = state_lib.create_train_state(experiment.network, optimizer, 0, experiment.data_shape,
                                         len(decays))
    x0 = experiment.dataset_fn(jax.random.PRNGKey(1), batch)
    keys = jax.random.split(jax.random.PRNGKey(2), batch)
    t, eps = jax.vmap(lambda x, key: jax.tree.map(
        lambda a: a[0], losses.draw_times_and_noise(key, x[None], model, loss_config)))(x0, keys)

    def mean_loss(params, x0, t, eps):
        model_fn = model.model_fn(bind(apply_fn, params))
        return jnp.mean(losses.loss_at(model_fn, x0, t, eps, model, loss_config))

    def draws(carry):
        step_key, total = carry
        per_example = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(batch))
        t, eps = jax.vmap(lambda x, key: losses.draw_times_and_noise(key, x[None], model,
                                                                     loss_config))(x0,
                                                                                   per_example)
        return jax.random.fold_in(step_key, 1), total + jnp.sum(t) + jnp.sum(eps)

    def forward(carry):
        params, total = carry
        return params, total + mean_loss(params, x0 + total * 1e-9, t, eps)

    def forward_backward(params):
        grads = jax.grad(mean_loss)(params, x0, t, eps)
        return jax.tree.map(lambda p, g: p - 1e-6 * g, params, grads)

    def optimizer_update(carry):
        params, opt_state = carry
        grads = jax.tree.map(lambda p: 1e-3 * p, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def ema(carry):
        params, emas, step = carry
        return params, state_lib.update_ema(emas, params, decays, step + 1, rampup), step + 1

    parts = {
        "draws": best_time(scanned(draws, k), (jax.random.PRNGKey(3), jnp.float32(0))),
        "loss": best_time(scanned(forward, k), (state.params, jnp.float32(0))),
        "loss + grad": best_time(scanned(forward_backward, k), state.params),
        "optimizer": best_time(scanned(optimizer_update, k), (state.params, state.opt_state)),
        "EMA": best_time(scanned(ema, k), (state.params, state.ema_params, jnp.int32(0))),
    }
    mesh = step_lib.make_mesh(jax.devices()[:1])
    fn = step_lib.make_train_step(apply_fn, model, loss_config, optimizer, decays, mesh,
                                  experiment.training.bucket_edges, False, rampup)
    batches = step_lib.make_batch_fn(experiment.dataset_fn, jax.random.PRNGKey(1), batch, mesh)
    block = batches(0, k)
    flops = one_update_flops(fn, jax.tree.map(jnp.copy, state), batches(0, 1))
    compiled = fn.lower(state, block).compile()
    holder = [jax.device_put(state, step_lib.replicated(mesh))]

    def full():
        holder[0], metrics = compiled(holder[0], block)
        return metrics["loss"]

    parts["full step"] = best_time(full)
    return {name: seconds / k for name, seconds in parts.items()}, flops / parts["full step"] * k


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
    parser.add_argument("--widths", default="64,256")
    args = parser.parse_args()
    print(f"## Train-step profile, {os.path.relpath(args.config, ROOT)} ({os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f})\n")
    for width in (int(w) for w in args.widths.split(",")):
        config = config_files.load_config(args.config)
        config.model.width = width
        experiment = experiment_lib.parse(config)
        parts, achieved = profile(experiment)
        batch, hidden = experiment.training.batch_size, width * experiment.network.expansion
        peak = matmul_flops(batch, width, hidden)
        full = parts["full step"]
        print(f"### width {width}, batch {batch}: {1e3 * full:.2f} ms per update, "
              f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the "
              f"{batch}x{width}x{hidden} matmul's {peak / 1e9:.1f} GFLOP/s\n")
        print("| part | ms per update | share of the full step |")
        print("|---|---:|---:|")
        for name, seconds in parts.items():
            print(f"| {name} | {1e3 * seconds:.3f} | {100 * seconds / full:.0f}% |")
        separate = sum(v for n, v in parts.items() if n not in ("full step", "loss"))
        print(f"| draws + loss and grad + optimizer + EMA, run apart | {1e3 * separate:.3f} | "
              f"{100 * separate / full:.0f}% |\n")


if __name__ == "__main__":
    main()
