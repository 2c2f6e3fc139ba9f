"""Inference layer: Monte Carlo EM as pure functions and a fit record.

* :mod:`~mixedfx.inference.estep`: HMC over the random effects;
* :mod:`~mixedfx.inference.gibbs`: blocked Gibbs over them, where the family's
  likelihood is conditionally Gaussian (``MCEMOptions(e_step=...)``), and
  :mod:`~mixedfx.inference.polya_gamma`, where it is logistic (Polya-Gamma augmented);
* :mod:`~mixedfx.inference.mstep`: the parameter-expanded M-step;
* :mod:`~mixedfx.inference.msteps`: its two regression strategies (closed-form
  Gaussian, Newton) behind one interface;
* :mod:`~mixedfx.inference.stopping`: swappable stopping rules;
* :mod:`~mixedfx.inference.loop`: the compiled EM iterations and their named state;
* :mod:`~mixedfx.inference.driver`: between compiled calls: traces, draws, the
  averaging window and recovery from breakdowns;
* :mod:`~mixedfx.inference.mcem`: :func:`fit_mcem`, which ties them together;
* :class:`FitSummary`: what every fit records.
"""

from mixedfx.inference.initial import conditional_modes, initial_parameters
from mixedfx.inference.layout import ParameterLayout
from mixedfx.inference.mcem import MCEMOptions, MCEMResult, fit_mcem
from mixedfx.inference.stopping import Decision, FixedIterations, MonteCarloErrorRule, monte_carlo_standard_error
from mixedfx.inference.structure import location_expansions, nested_centering
from mixedfx.inference.summary import FitSummary

__all__ = [
    "initial_parameters",
    "conditional_modes",
    "MCEMOptions",
    "MCEMResult",
    "fit_mcem",
    "location_expansions",
    "nested_centering",
    "ParameterLayout",
    "Decision",
    "FixedIterations",
    "MonteCarloErrorRule",
    "monte_carlo_standard_error",
    "FitSummary",
]
