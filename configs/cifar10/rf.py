"""CIFAR-10, rectified flow (1-rectified flow): Liu et al. 2022, "Flow Straight and Fast"
(configs/rectified_flow/cifar10_rf_gaussian_ddpmpp.py).

* Linear interpolant x_s = (1 - s) x0 + s eps, velocity network v = eps - x0, plain velocity
  MSE, s uniform (here on [1e-4, 0.999], the schedule's safe domain).
* DDPM++ as score_sde: nf 128, ch_mult (1, 2, 2, 2), 4 blocks, attention at 16x16, dropout 0.15,
  positional embedding (61.8 M parameters); random horizontal flips.
* Adam, lr 2e-4, 5000 warm-up steps, gradient clipping at 1, batch 128, 1.3 M iterations,
  EMA 0.999999. Samples by the probability-flow ODE with RK45 (tolerances 1e-5).
"""

from configs.cifar10 import common


def get_config():
    return common.image_config(
        data={"name": "cifar10", "random_flip": True, "dequantize": False, "num_threads": 8},
        model=common.score_sde_ddpmpp(dropout=0.15),
        diffusion={
            "schedule": "rf",
            "prediction": "velocity",
            "sigma_data": 0.5,
            "scale_input": False,  # the flow network sees x_s itself
        },
        loss={"weighting": "velocity", "time_sampler": "uniform", "importance_weighted": False},
        optimizer=common.SCORE_SDE_OPTIMIZER,
        training=common.score_sde_training(0.999999),
        sampler={"name": "ode", "rtol": 1e-5, "atol": 1e-5},
        eval={"num_samples": 1024, "nll_examples": 0, "nll_divergence": "hutchinson"},
    )
