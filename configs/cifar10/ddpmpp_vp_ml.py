"""CIFAR-10, DDPM++ cont. (VP) trained by maximum likelihood (score_sde / ScoreFlow).

Anchors: Song et al. 2021 "Score-Based Generative Modeling through SDEs" (configs/vp/
cifar10_ddpmpp_continuous.py) and Song et al. 2021 "Maximum Likelihood Training of Score-Based
Diffusion Models" (likelihood weighting + importance sampling):

* VP-SDE with linear beta from 0.1 to 20 on t in [1e-5, 1] (``linear_vp``); centred data in
  [-1, 1], random horizontal flips; uniform dequantisation (the likelihood's convention).
* DDPM++: nf 128, ch_mult (1, 2, 2, 2), 4 residual blocks per resolution, attention at 16x16,
  BigGAN-style resampling blocks, skip rescaling by 1/sqrt(2), positional time embedding,
  dropout 0.1 (61.8 M parameters here). The network outputs eps (score = -eps / sigma).
* Likelihood weighting: w(t) = g^2 = w_ML in our x0-space notation (``ml``), with ScoreFlow's
  importance sampling p(t) ~ g^2 / sigma^2, i.e. uniform in log-SNR (``log_snr``, importance
  weighted so the objective is unchanged).
* Adam, lr 2e-4, 5000 warm-up steps, gradient clipping at 1, batch 128, 1.3 M iterations,
  EMA 0.9999. Samples by the probability-flow ODE (RK45, tolerances 1e-5).

Differences: the network sees EDM's c_noise = log(sigma_ve) / 4 instead of 999 t (an invertible
change of the time input); EDM's layout of DDPM++ (equivalent to the original, see unet.py).
"""

from configs.cifar10 import common


def get_config():
    return common.image_config(
        data={"name": "cifar10", "random_flip": True, "dequantize": True, "num_threads": 8},
        model=common.score_sde_ddpmpp(dropout=0.1),
        diffusion={
            "schedule": "linear_vp",
            "t_min": 1e-5,
            "prediction": "eps",
            "sigma_data": 0.5,
            "scale_input": False,  # DDPM++ sees x_t itself
        },
        loss={"weighting": "ml", "time_sampler": "log_snr", "importance_weighted": True},
        optimizer=common.SCORE_SDE_OPTIMIZER,
        training=common.score_sde_training(0.9999),
        sampler={"name": "ode", "rtol": 1e-5, "atol": 1e-5},
        # Bits/dim of the first 1024 test images by the probability-flow ODE (ScoreFlow reports
        # the whole test set with 5 Hutchinson repeats: set 10000).
        eval={"num_samples": 1024, "nll_examples": 1024, "nll_divergence": "hutchinson"},
    )
