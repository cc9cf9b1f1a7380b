"""Data parallelism: 8 forced host devices give the same parameters as 1 on the same global batch.

Plain SGD with a large step, so a gradient scaled by the device count (the shard_map
``check_vma`` trap) would show as an 8x larger update instead of hiding behind Adam. XLA_FLAGS
must be set before jax is imported, hence the subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from diffusion_lv import losses
    from diffusion_lv.data import toy
    from diffusion_lv.models.mlp import MLP
    from diffusion_lv.parameterization import Parameterization
    from diffusion_lv.schedules import get_schedule
    from diffusion_lv.training import state as st, step as sp

    assert jax.device_count() == 8, jax.devices()
    net = MLP(width=16, num_blocks=1, embedding_features=8)
    param = Parameterization(get_schedule("rf"), "velocity", sigma_data=1.4)
    loss = losses.LossConfig(weighting="velocity")
    optimizer = st.make_optimizer(st.OptimizerConfig(name="sgd", learning_rate=0.05))
    steps, batch = 3, 32
    block = np.asarray(jax.vmap(lambda k: toy.ring8(k, batch))(
        jax.random.split(jax.random.PRNGKey(1), steps)))

    def initial_state():
        state = st.create_train_state(net, optimizer, 0, (2,), 1)
        # Move off the zero-initialised output layer so every parameter gets a gradient.
        params = jax.tree.map(lambda p: p + 0.1, state.params)
        return state.replace(params=params, opt_state=optimizer.init(params))

    out = {}
    for n in (1, 8):
        mesh = sp.make_mesh(jax.devices()[:n])
        fn = sp.make_train_step(net.apply, param, loss, optimizer, (0.9,), mesh)
        state = jax.device_put(initial_state(), sp.replicated(mesh))
        batches = jax.device_put(block, sp.batch_sharding(mesh))
        assert len(batches.addressable_shards) == n
        state, metrics = fn(state, batches)
        out[n] = {
            "params": [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)],
            "loss": np.asarray(metrics["loss"]).tolist(),
            "grad_norm": np.asarray(metrics["grad_norm"]).tolist(),
            "bucket_count": np.asarray(metrics["bucket_count"]).sum(-1).tolist(),
        }
    init = [np.asarray(x).tolist() for x in jax.tree.leaves(initial_state().params)]
    print("RESULT" + json.dumps({"one": out[1], "eight": out[8], "init": init}))
    """
)


def test_eight_devices_match_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    one, eight = result["one"], result["eight"]
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(eight["grad_norm"], one["grad_norm"], rtol=1e-4)
    assert eight["bucket_count"] == one["bucket_count"] == [32.0, 32.0, 32.0]
    largest_update = 0.0
    for p1, p8, p0 in zip(one["params"], eight["params"], result["init"], strict=True):
        p1, p8, p0 = np.asarray(p1), np.asarray(p8), np.asarray(p0)
        update = np.max(np.abs(p1 - p0))
        largest_update = max(largest_update, update)
        # Float32 summation order differs between 1 and 8 devices; nothing else may.
        np.testing.assert_allclose(p8, p1, rtol=1e-5, atol=1e-5 * max(update, 1e-3))
    # The updates are large enough that a gradient 8x too large could not pass.
    assert largest_update > 1e-2
