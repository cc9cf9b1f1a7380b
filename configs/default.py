"""Base config, and the quick-start main job: ring of 8 Gaussians, EDM-style VE-Karras model.

Every other config file overrides a few keys of this one. On a 2-core CPU this config trains
2000 steps in about half a minute of CPU time, samples 8192 points with Heun's method (35 model
evaluations), reaches a sliced Wasserstein distance within 2x of its Monte Carlo floor and
computes the probability-flow NLL of 256 data points. Sections: data, model, diffusion
(schedule and network output), loss (weighting and time sampler), optimizer, training (loop),
sampler, eval.
"""

from ml_collections import config_dict


def get_config():
    config = config_dict.ConfigDict()
    config.seed = 0

    config.data = config_dict.ConfigDict()
    config.data.name = "ring8"  # ring8, checkerboard, two_moons, swiss_roll

    config.model = config_dict.ConfigDict()
    config.model.name = "mlp"
    config.model.width = 64
    config.model.num_blocks = 3
    config.model.expansion = 2
    config.model.embedding_features = 64
    config.model.max_frequency = 16.0

    # The forward process and what the network outputs in it (convert.PREDICTIONS).
    config.diffusion = config_dict.ConfigDict()
    config.diffusion.schedule = "ve"  # vp, ve, rf, linear_vp, cosine_vp
    config.diffusion.t_min = config_dict.placeholder(float)  # None: the schedule's default
    config.diffusion.t_max = config_dict.placeholder(float)
    config.diffusion.prediction = "edm"  # x0, eps, score, velocity, v, edm
    config.diffusion.sigma_data = config_dict.placeholder(float)  # None: the data's std
    config.diffusion.scale_input = True  # network sees c_in * x / alpha

    # w(t) ||D - x0||^2: weighting (x0 space) and where times are drawn (losses.py).
    config.loss = config_dict.ConfigDict()
    config.loss.weighting = "edm"  # ml, eps, score, x0, velocity, v, edm, min_snr
    config.loss.time_sampler = "lognormal"  # uniform, log_snr, lognormal, ml_importance
    config.loss.p_mean = -1.2
    config.loss.p_std = 1.2
    config.loss.importance_weighted = False  # True: the proposal does not change the objective

    config.optimizer = config_dict.ConfigDict()
    config.optimizer.name = "adam"  # adam, adamw, sgd
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.decay = "cosine"  # constant, cosine
    config.optimizer.decay_steps = config_dict.placeholder(int)  # None: to the last step
    config.optimizer.final_lr_fraction = 0.0
    config.optimizer.weight_decay = 0.0
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.grad_clip = 1.0  # global norm; 0 disables

    config.training = config_dict.ConfigDict()
    config.training.batch_size = 512
    config.training.num_steps = 2000
    config.training.steps_per_call = 100  # updates per compiled call (lax.scan)
    config.training.log_every = 200
    config.training.checkpoint_every = 1000
    config.training.keep_checkpoints = 3
    config.training.sample_every = 1000  # 0: no plots during training
    config.training.ema_decays = (0.995, 0.999)  # eval uses the first
    # EMA half-life capped at this fraction of the updates made (EDM's ramp-up), so a short
    # run's EMA is never mostly its random initialisation; 0: constant decays.
    config.training.ema_rampup = 0.05
    config.training.bucket_edges = (0.1, 1.0, 10.0)  # sigma_ve edges of the loss buckets
    # None: resume from the newest checkpoint that verifies; N: from exactly step N (later
    # steps are moved aside to checkpoints/<step>.superseded).
    config.training.resume_step = config_dict.placeholder(int)
    # True: the updates of one call are unrolled instead of a lax.scan (XLA:CPU runs convolution
    # gradients inside a loop far slower; the digits recipe sets it).
    config.training.unroll_steps = False

    # samplers.SamplerConfig fields.
    config.sampler = config_dict.ConfigDict()
    config.sampler.name = "heun"
    config.sampler.nfe = 35
    config.sampler.grid = "karras"
    config.sampler.sigma_min = config_dict.placeholder(float)  # None: the schedule's range
    config.sampler.sigma_max = config_dict.placeholder(float)
    config.sampler.rho = 7.0
    config.sampler.c = config_dict.placeholder(float)  # None: the sampler's default (1: ODE)
    config.sampler.final_denoise = True

    config.eval = config_dict.ConfigDict()
    config.eval.num_samples = 8192
    # Samples per compiled sampler call (a progress bar over the calls); 0: all in one call.
    config.eval.sample_batch_size = 0
    config.eval.num_projections = 256
    config.eval.repeats = 8  # reference draws averaged for the distance and its floor
    config.eval.params = "ema"  # ema, raw
    config.eval.ema_decay = config_dict.placeholder(float)  # None: the first EMA decay
    config.eval.checkpoint_step = config_dict.placeholder(int)  # None: the latest checkpoint
    # Probability-flow NLL (diffusion_lv/likelihood.py) on held-out data: fresh draws of a 2-D
    # set, the eval split of an image set (all of it if it has fewer examples), dequantised to
    # the data's levels for images. metrics.json gets the mean bits/dim and its standard error.
    config.eval.nll_examples = 256  # at most this many examples; 0: off
    config.eval.nll_batch_size = 256  # examples per ODE solve (one compilation)
    config.eval.nll_divergence = "exact"  # exact (small dimensions), hutchinson
    config.eval.nll_num_probes = 1  # Hutchinson probes per example
    config.eval.nll_rtol = 1e-5  # adaptive solver tolerances
    config.eval.nll_atol = 1e-5
    # How discrete data are scored (likelihood.py): "uniform" bins for data trained uniformly
    # dequantised (data.dequantize=True), "centred" (DDPM's discretisation) for data trained on
    # the grid values; "auto" picks the one that matches data.dequantize, the other is refused.
    config.eval.nll_dequantization = "auto"
    # The reverse-SDE model's variational bound on the same examples (likelihood_bound.py):
    # time draws per example; 0: off. Reported beside the ODE NLL as nll_bound_bpd.
    config.eval.nll_bound_times = 64
    # J(theta) - J* (bits/dim, total and by noise band), the ML objective's excess over its
    # minimum, on this many fresh draws where the data have an exact denoiser (ring8); also in
    # TensorBoard every training.sample_every steps. 0: off.
    config.eval.excess_examples = 1024
    config.eval.seed = 0
    # FID (image data only): the path of pytorch-fid's Inception weights,
    # pt_inception-2015-12-05-6726825d.pth from its GitHub releases (or an .npz of the same
    # keys); "": no FID. fid_reference: a pytorch-fid statistics .npz (mu, sigma) to compare
    # with; "": statistics of eval.num_samples images of the data set's test split (train if it
    # has none), cached in the workdir as fid_reference_stats.npz. See docs/images.md.
    config.eval.inception_weights = ""
    config.eval.fid_reference = ""

    # --mode=inpaint (docs/conditional.md): complete held-out examples whose `mask` part is
    # unknown with a conditional sampler over the trained model. mask: left_half, right_half,
    # random_half (any data); top_half, bottom_half, centre (images). method: replacement,
    # repaint, langevin, smc (a particle filter; set particles), dps. The method's options
    # below are None (its default) unless set; one the method does not read is refused.
    config.inpaint = config_dict.ConfigDict()
    config.inpaint.mask = "left_half"
    config.inpaint.num_examples = 1024  # held-out examples, one completion each (smc: particles)
    config.inpaint.method = "langevin"
    config.inpaint.nfe = 200
    config.inpaint.grid = "karras"
    config.inpaint.sigma_min = config_dict.placeholder(float)  # None: the schedule's range
    config.inpaint.sigma_max = config_dict.placeholder(float)
    config.inpaint.c = config_dict.placeholder(float)  # the outer split's rate
    config.inpaint.langevin_steps = config_dict.placeholder(int)  # langevin, smc: inner steps
    config.inpaint.step_scale = config_dict.placeholder(float)  # langevin, smc: step / sigma^2
    config.inpaint.hold = config_dict.placeholder(str)  # langevin: clean, noisy
    config.inpaint.resamples = config_dict.placeholder(int)  # repaint: resamples per level
    config.inpaint.guidance_scale = config_dict.placeholder(float)  # dps
    config.inpaint.particles = config_dict.placeholder(int)  # smc: completions per example
    config.inpaint.resample_threshold = config_dict.placeholder(float)  # smc: ESS fraction
    return config
