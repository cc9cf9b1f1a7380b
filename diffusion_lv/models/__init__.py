"""Networks: a residual MLP (mlp.py) and a DDPM++/EDM U-Net (unet.py). Each is a Flax module
``network(net_input, c_noise) -> output``; ``parameterization.py`` says what the output means."""

import jax


def param_count(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))
