"""The paper's Tables 1-7, every printed cell checked against the general derivation.

Each cell of Tables 1-7 of "Rethinking the Diffusion Model from a Langevin Perspective" is coded
*as printed* (one function per cell, ``t<table>_<row>_<column>``, docstring citing the cell) and
compared at random points with what diffusion_lv derives from a schedule's ``(alpha, sigma)``
alone: ``schedules`` (f, g^2), ``convert`` (times, states, predictions), ``langevin`` (the split
steps and reverse drifts), ``losses`` (perturbation, maximum-likelihood weight) and the exact
Gaussian-mixture oracle (scores, denoisers, predictions). A printed cell that disagrees is
reported as DISAGREES with a corrected formula, and the corrected formula is checked too.

Layout:

* ``table1`` ... ``table7``: one module per table; each has the printed cells, the checks that
  compare them with the derivation, ``CELLS``, the report's ``TITLE`` and ``COMPARED_WITH`` text
  and ``notes(measured)``, the markdown lines after the table. Its docstring states the table's
  convention.
* ``measure``: random points (``Context``, ``Points``), the paper's noise level
  (``paper_level``), error measures (``rel_error``, ``sde_error``) and ``step_sde``.
* ``cells``: ``Cell``, ``Result`` and its verdict, ``TOLERANCE``, the markdown of one table.
* ``runner``: ``reproduce``, ``to_markdown`` and ``main``, the command line of
  ``python scripts/reproduce_tables.py`` and ``python -m experiments.paper_tables``.

Conventions:

* The paper's VP noise level ``alpha_t = e^{-t}`` is ``alpha(t)^2`` in the code. Formulas printed
  in ``alpha_t`` hold for every VP-family schedule (vp, linear_vp, cosine_vp) with
  ``alpha_t := alpha(t)^2``, so they are checked on all three; formulas in ``t`` only on vp.
* Table 3's VE-Karras and rectified-flow rows write the current noise level as ``tau`` (the
  forward split advances it by ``d tau``); their reverse splits have no noise, so they are the
  rate ``c = 1`` (ODE) members of the split family; VP-SDE is ``c = 2``, VP-ODE ``c = 1``.
* Points: times with ``sigma_ve`` log-uniform over the schedule's safe domain (the intersection
  of the domains when two schedules are involved), ``x0`` from the oracle, ``x_t = alpha x0 +
  sigma eps`` (an exact draw of ``p_t``). Everything runs in float64 with a fixed seed.
* Error: per example ``max|printed - derived| / max(|printed|, |derived|, floor)`` over the data
  axes, maximised over points, schedules and every derivation a cell is compared with. The floor
  is 0 except where a printed value is legitimately zero: drifts use ``|x|`` (drift per unit time
  relative to the state) and diffusion coefficients are compared as variance rates relative to
  ``g^2``, the forward variance rate being split.
"""

from .runner import CELLS, main, reproduce, to_markdown

__all__ = ["CELLS", "main", "reproduce", "to_markdown"]
