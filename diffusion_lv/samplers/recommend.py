"""The measured choice of sampler and grid for a budget (docs/samplers.md, "Which sampler").

``recommended(nfe)``: UniPC (order 3, data prediction, UniC corrector) over the model
schedule's whole noise range, so the last step always reaches the data end (``sigma_min`` of the
schedule, then the final denoise): no budget buys its error by stopping early. The B(h) variant
and the grid follow the budget:

* ``fitted=True``: ``grid="optimized"``, a grid fitted to the model for this sampler and budget
  (``fit_grid``, stored with ``save_fitted``, applied with ``with_fitted``); ``bh1`` below 10
  NFE, ``bh2`` from 10. Up to ``HISTORY_CANDIDATE_UP_TO`` NFE the order rule and the B(h)
  variant are themselves chosen per model: ``fitted_candidates(nfe)`` lists the configuration
  with the order rule ("auto") and with orders by history only, each with the budget's variant
  and the other one, and ``fit_best`` keeps the one whose fitted grid has the lowest loss on the
  fitting noise (a fitted grid can place its steps for the full order, which the rule would
  cut back where a lambda step exceeds 1; on other models the rule's safer orders fit better:
  measured both ways on the benchmark; the budget's variant is a rule fitted on three
  problems, and near its threshold the other variant can fit a model better);
* ``fitted=False``: the log-SNR grid; ``bh1`` up to 10 NFE, ``bh2`` above.

The thresholds and the choice itself were measured on three benchmark problems and reported on
three others (scripts/bench_samplers.py).
"""

from __future__ import annotations

from diffusion_lv import checks
from diffusion_lv.samplers.api import FITTED_GRID, SamplerConfig

BH1_BELOW_FITTED = 10  # fitted grids: bh1 for nfe < 10
BH1_UP_TO_FIXED = 10  # the log-SNR grid: bh1 for nfe <= 10
HISTORY_CANDIDATE_UP_TO = 10  # fitted grids: also try order_limit="history" for nfe <= 10


def recommended(
    nfe: int, fitted: bool = False, variant: str | None = None, **settings
) -> SamplerConfig:
    """The recommended ``SamplerConfig`` for ``nfe`` model evaluations (module docstring).

    ``variant`` overrides the budget's B(h) variant; ``settings`` are passed on (e.g.
    ``final_denoise``, ``trajectory``, ``fitted_sigmas``); with ``fitted=True`` the grid must
    still be fitted (or loaded) before sampling.
    """
    checks.number("nfe", nfe, lo=2, integer=True)
    if fitted:
        budget_variant = "bh1" if nfe < BH1_BELOW_FITTED else "bh2"
        grid = FITTED_GRID
    else:
        budget_variant = "bh1" if nfe <= BH1_UP_TO_FIXED else "bh2"
        grid = "log_snr"
    variant = budget_variant if variant is None else variant
    return SamplerConfig(name="unipc", nfe=nfe, grid=grid, order=3, variant=variant, **settings)


def fitted_candidates(nfe: int, **settings) -> list[SamplerConfig]:
    """The configurations whose fitted grids ``fit_best`` compares for ``nfe`` (module doc)."""
    cfg = recommended(nfe, fitted=True, **settings)
    if nfe > HISTORY_CANDIDATE_UP_TO:
        return [cfg]
    other = "bh2" if cfg.resolved_options["variant"] == "bh1" else "bh1"
    return [
        cfg,
        recommended(nfe, fitted=True, order_limit="history", **settings),
        recommended(nfe, fitted=True, variant=other, **settings),
        recommended(nfe, fitted=True, variant=other, order_limit="history", **settings),
    ]
