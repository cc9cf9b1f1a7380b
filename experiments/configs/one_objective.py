"""Experiment 6, one objective: ``python -m experiments.one_objective`` (the 2-D mixture: VP score,
VE eps and RF velocity under the ML objective, its conditioning control and the native losses, 5
seeds, learning curves of ``J - J*``, the SDE bound and the ODE NLL; measured on a 2-core CPU:
9 minutes wall, 10 CPU minutes (user + system)),
``...py:digits`` (the 8x8 digits, trained dequantised, ML rows, 5 seeds), ``...py:full`` (both,
longer and larger: sized for an accelerator).

Each data set section overrides the library config it starts from (``configs/toy.py`` for
the mixture, ``configs/digits/common.py`` for the digits): its ``model``, ``training``,
``optimizer``, ``sampler`` (and, for the digits, ``data``) sub-sections replace those keys, e.g.
``--config.mixture.training.num_steps=8000``. ``eval_steps`` is the log grid of training steps
at which every measurement is taken (each a multiple of ``training.steps_per_call``, the last one
``training.num_steps``); ``nll`` sets the probability-flow likelihood, ``bound`` the SDE bound
and ``J - J*`` estimates, ``quality`` the sample-quality measurement (final step).
"""

from ml_collections import config_dict

SIZES = ("default", "mixture", "digits", "full", "tiny")


def _mixture():
    return config_dict.ConfigDict({
        # ring8: the oracle's ring of 8 Gaussians (radius 2, std 0.1), exact density and denoiser.
        "model": {"width": 64, "num_blocks": 3},
        # Cosine learning-rate decay to the last step (the library default); EMA evaluated.
        "training": {"num_steps": 2000, "batch_size": 256, "steps_per_call": 125,
                     "ema_decays": (0.995,)},
        "optimizer": {"learning_rate": 1e-3, "warmup_steps": 100},
        # One sampler for every model, so that quality differences come from training.
        "sampler": {"name": "heun", "nfe": 35, "grid": "karras", "c": None,
                    "step_schedule": None},
        "eval_steps": (125, 250, 500, 1000, 2000),
        # Held-out points: fresh exact samples of the mixture (the same for every model, step and
        # seed). The ODE NLL is solved at every step for `ode_curve_variants`, at the last one
        # for the others (it is the expensive measurement).
        "nll": {"examples": 256, "batch_size": 256, "divergence": "exact", "num_probes": 1,
                "rtol": 1e-5, "atol": 1e-5, "error_norm": "max"},
        "ode_curve_variants": ("ml",),
        # Time draws per example of the bound and of J - J* (ML proposal; one key for all).
        "bound": {"num_times": 64},
        # SWD averaged over `repeats` exact reference draws; the floor over `floor_draws` pairs.
        "quality": {"num_samples": 2048, "num_projections": 128, "repeats": 8,
                    "floor_draws": 16},
    })


def _digits():
    return config_dict.ConfigDict({
        # Trained on uniformly dequantised pixels, so that the NLL's uniform bins match the
        # training data (likelihood.matched_dequantization).
        "data": {"dequantize": True},
        # A U-Net smaller than configs/digits (1.03 M parameters) so that several seeds fit.
        "model": {"channels": 16, "channel_mult": (1, 2), "num_blocks": 1,
                  "attn_resolutions": ()},
        "training": {"num_steps": 600, "batch_size": 64, "ema_decays": (0.99,)},
        "optimizer": {"learning_rate": 2e-3, "warmup_steps": 50},
        "sampler": {"name": "heun", "nfe": 35, "grid": "karras", "c": None,
                    "step_schedule": None},
        "eval_steps": (150, 300, 600),
        # The test split (297 images), dequantised over the digits' 17 grey levels.
        "nll": {"examples": 297, "batch_size": 297, "divergence": "hutchinson", "num_probes": 1,
                "rtol": 1e-4, "atol": 1e-4, "error_norm": "rms"},
        "ode_curve_variants": (),
        "bound": {"num_times": 32},
        # Frechet distance in digits-classifier features; the floor is real train images of the
        # same number.
        "quality": {"num_samples": 500},
    })


def get_config(size: str = "default"):
    if size not in SIZES:
        raise ValueError(f"unknown config size {size!r}; valid choices: {list(SIZES)}")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.num_seeds = 5  # seeds seed, seed + 1, ...: each trains every model once
    config.datasets = ("mixture",)
    # Network output in its own schedule: vp_score, ve_eps, rf_velocity.
    config.models = ("vp_score", "ve_eps", "rf_velocity")
    # ml: w_ML with the ML importance proposal (sigma_data = the data's std), reweighted to
    # uniform t: the ML objective. ml_scaled: the same objective with the network's raw output
    # multiplied by the fixed c_out(t) that makes its regression target unit-variance (the
    # conditioning control). native: each output's plain MSE (score, eps, velocity) over
    # uniform t, drawn uniformly (Table 7).
    config.variants = ("ml", "ml_scaled", "native")
    # Variants trained on the digits (a subset of `variants`).
    config.digits_variants = ("ml",)
    # Every schedule is cut to the same canonical noise range, so that the NLL is the same
    # quantity (-log p at sigma_ve = 0.002) and the ML objectives are the same integral.
    config.sigma_ve_range = (0.002, 80.0)
    # 0 disables clipping: the ML objective's scale is 1 / (t_max - t_min) in each schedule's
    # own time, and a clip at a fixed norm would act on the three models differently.
    config.grad_clip = 0.0
    # Two-sided level of the paired t-tests (seeds are the unit; dof = seeds - 1).
    config.alpha = 0.05
    config.mixture = _mixture()
    config.digits = _digits()
    # The RF-velocity model (ML objective, last step) converted to a VP score model, sampled by
    # the VP reverse SDE, against RF's own probability-flow Euler sampler at the same NFE.
    config.conversion = config_dict.ConfigDict({
        "datasets": ("mixture",),
        "nfe": 100,
        "grid": "karras",
    })
    config.digits_num_seeds = 5  # seeds on the digits (at most num_seeds)
    if size == "digits":
        config.datasets = ("digits",)
        config.conversion.datasets = ()
    elif size == "full":
        config.datasets = ("mixture", "digits")
        config.num_seeds = 8
        config.digits_num_seeds = 5
        config.digits_variants = ("ml", "ml_scaled")
        config.mixture.model.width = 128
        config.mixture.training.num_steps = 64000
        config.mixture.training.batch_size = 512
        config.mixture.training.steps_per_call = 500
        config.mixture.eval_steps = (500, 1000, 2000, 4000, 8000, 16000, 32000, 64000)
        config.mixture.nll.examples = 2048
        config.mixture.nll.batch_size = 1024
        config.mixture.ode_curve_variants = ("ml", "ml_scaled", "native")
        config.mixture.bound.num_times = 256
        config.mixture.quality.num_samples = 8192
        config.mixture.quality.num_projections = 256
        config.digits.model = config_dict.ConfigDict({
            "channels": 32, "channel_mult": (1, 2), "num_blocks": 2, "attn_resolutions": (4,),
        })
        config.digits.training.num_steps = 20000
        config.digits.training.batch_size = 128
        config.digits.training.ema_decays = (0.999,)
        config.digits.eval_steps = (1250, 2500, 5000, 10000, 20000)
        config.digits.nll.num_probes = 4
        config.digits.nll.rtol = 1e-5
        config.digits.nll.atol = 1e-5
        config.digits.bound.num_times = 128
        config.digits.quality.num_samples = 1500
        config.conversion.nfe = 200
    elif size == "tiny":  # the tests
        config.num_seeds = 2
        config.mixture.model.width = 16
        config.mixture.model.num_blocks = 1
        config.mixture.training.num_steps = 40
        config.mixture.training.batch_size = 64
        config.mixture.training.steps_per_call = 20
        config.mixture.eval_steps = (20, 40)
        config.mixture.nll.examples = 16
        config.mixture.nll.batch_size = 16
        config.mixture.nll.rtol = 1e-3
        config.mixture.nll.atol = 1e-3
        config.mixture.bound.num_times = 8
        config.mixture.quality.num_samples = 256
        config.mixture.quality.num_projections = 32
        config.mixture.quality.repeats = 2
        config.mixture.quality.floor_draws = 4
        config.mixture.sampler.nfe = 9
        config.conversion.nfe = 10
    return config
