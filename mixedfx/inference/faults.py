"""A test hook: a NaN or inf injected into the E-step's chains at a chosen iteration.

:attr:`MCEMOptions.fault_injection <mixedfx.inference.MCEMOptions>` names the EM
iteration and the value; :class:`FaultInjection` tells each compiled call at which of
its iterations to inject (``-1``: none), and how many attempts of that iteration are
hit, so that tests can check both the recovery from a breakdown
(:class:`~mixedfx.inference.driver.Recovery`) and the :class:`~mixedfx.FitError` when
every retry breaks down again.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixedfx.exceptions import ParameterError

__all__ = ["FaultInjection"]


@dataclass
class FaultInjection:
    """Where and how often the test hook injects a fault.

    Parameters
    ----------
    iteration : int
        The EM iteration (counted from 1, as in ``FitSummary.recoveries``) whose
        E-step starts from chains set to ``kind``.
    kind : {"nan", "inf"}
    times : int, default 1
        How many attempts at that iteration are hit: 1 injects once (the retry of the
        block runs clean); more than ``max_retries`` hits every retry.

    Examples
    --------
    Iteration 7 is the second of the call that starts after 5 iterations; the retry of
    that call runs clean:

    >>> from mixedfx.inference.faults import FaultInjection
    >>> fault = FaultInjection.from_option((7, "nan"))
    >>> fault.iteration_in_call(first=0, length=5), fault.iteration_in_call(first=5, length=5)
    (-1, 1)
    >>> fault.iteration_in_call(first=5, length=5)
    -1
    """

    iteration: int
    kind: str
    times: int = 1
    hits: int = 0

    @classmethod
    def from_option(cls, option) -> FaultInjection | None:
        """From ``MCEMOptions.fault_injection``: None, ``(iteration, kind)`` or
        ``(iteration, kind, times)``; raises :class:`~mixedfx.ParameterError` otherwise."""
        if option is None:
            return None
        parts = tuple(option) if isinstance(option, (tuple, list)) else ()
        valid = (len(parts) in (2, 3) and isinstance(parts[0], int) and parts[0] >= 1 and parts[1] in ("nan", "inf")
                 and (len(parts) == 2 or (isinstance(parts[2], int) and parts[2] >= 1)))
        if not valid:
            raise ParameterError(
                "fault_injection must be None, (iteration, kind) or (iteration, kind, times) with iteration >= 1, "
                f"kind 'nan' or 'inf' and times >= 1, got {option!r}")
        return cls(*parts)

    def iteration_in_call(self, *, first: int, length: int) -> int:
        """The iteration of a call (of iterations ``first + 1`` to ``first + length``)
        to inject the fault at, or -1; counts the hit."""
        local = self.iteration - 1 - first
        if 0 <= local < length and self.hits < self.times:
            self.hits += 1
            return local
        return -1
