"""Frozen specifications produced by the formula parser.

Specs hold only what the formula says, never anything learned from data: the fixed
part as a formulaic formula string, and one :class:`RandomTermSpec` per random-effect
term after lme4's expansions (``(1 | a/b)`` becomes ``(1 | a)`` and ``(1 | a:b)``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RandomTermSpec", "FormulaSpec"]


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effect term ``(expr | grouping)``.

    Attributes
    ----------
    expr : str
        Source text left of the bar, e.g. ``"1"`` or ``"1 + Days"``.
    grouping : tuple of str
        Grouping column names.  One name is a plain factor; several names form the
        interaction of those columns (lme4's ``a:b``), whose levels are the
        combinations present in the data.
    correlated : bool
        ``False`` for the double-bar form ``(expr || grouping)``.
    intercept_only : bool
        Whether ``expr`` is exactly ``1``: a random intercept.
    text : str
        The term as written in the formula, e.g. ``"(1 | s)"``.
    position : int
        Offset of the term in the formula text, for error messages.
    covariance : str
        The covariance structure, glmmTMB's name: ``"us"`` (unstructured, lme4's
        ``(x | g)``), or ``"diag"``, ``"homdiag"``, ``"cs"``, ``"homcs"``, ``"ar1"``,
        ``"toep"`` for ``ar1(0 + timef | subject)`` and friends.
    covariance_args : tuple of (str, str)
        The structure's further arguments as written, e.g. ``(("d", "2"),)`` for
        ``rr(x | g, d = 2)``.
    coordinates : tuple of str
        The numeric coordinate columns of a continuous structure (``ou``, ``exp``,
        ``gau``): ``("x", "y")`` for ``exp(x + y + 0 | g)``; empty for any other term.

    Examples
    --------
    The parser makes them; lme4's nesting ``a/b`` expands into two terms:

    >>> import mixedfx
    >>> spec = mixedfx.parse_formula("y ~ x + (1 + x | g) + (1 | a/b)")
    >>> [str(term) for term in spec.random]
    ['(1 + x | g)', '(1 | a)', '(1 | a:b)']
    >>> slope, _, nested = spec.random
    >>> slope.expr, slope.grouping, slope.intercept_only
    ('1 + x', ('g',), False)
    >>> nested.grouping, nested.group_name, nested.text
    (('a', 'b'), 'a:b', '(1 | a/b)')
    >>> mixedfx.parse_formula("y ~ (x || g)").random[0].correlated
    False
    >>> ar1 = mixedfx.parse_formula("y ~ ar1(0 + timef | subject)").random[0]
    >>> ar1.covariance, ar1.expr, str(ar1)
    ('ar1', '0 + timef', 'ar1(0 + timef | subject)')
    >>> mixedfx.parse_formula("y ~ exp(x + y + 0 | field)").random[0].coordinates
    ('x', 'y')
    """

    expr: str
    grouping: tuple[str, ...]
    correlated: bool
    intercept_only: bool
    text: str
    position: int
    covariance: str = "us"
    covariance_args: tuple[tuple[str, str], ...] = ()
    coordinates: tuple[str, ...] = ()

    @property
    def group_name(self) -> str:
        """The grouping factor's display name: column names joined by ``":"``."""
        return ":".join(self.grouping)

    def __str__(self) -> str:
        bar = "|" if self.correlated else "||"
        if self.covariance != "us":
            args = "".join(f", {name} = {value}" for name, value in self.covariance_args)
            return f"{self.covariance}({self.expr} {bar} {self.group_name}{args})"
        return f"({self.expr} {bar} {self.group_name})"


@dataclass(frozen=True)
class FormulaSpec:
    """A parsed lme4 formula.

    Attributes
    ----------
    text : str
        The formula as given.
    response : str or None
        Source text of the left-hand side, ``None`` for a one-sided formula.
    fixed : str
        The fixed-effects right-hand side, in formulaic's grammar (``"1"`` when the
        formula has only random terms).
    random : tuple of RandomTermSpec
        The random-effect terms, in formula order after expansion.
    offsets : tuple of str
        Expressions inside ``offset(...)`` terms, added to the linear predictor with a
        fixed coefficient of one (lme4's ``offset(log(exposure))``).

    Examples
    --------
    >>> import mixedfx
    >>> spec = mixedfx.parse_formula("y ~ x + offset(log(t)) + (1 | a/b)")
    >>> spec.response, spec.fixed, spec.offsets
    ('y', 'x', ('log(t)',))
    >>> len(spec.random), spec.grouping_columns
    (2, ('a', 'b'))
    >>> print(spec)  # lme4's expansions written out
    y ~ x + offset(log(t)) + (1 | a) + (1 | a:b)
    """

    text: str
    response: str | None
    fixed: str
    random: tuple[RandomTermSpec, ...]
    offsets: tuple[str, ...] = ()

    @property
    def grouping_columns(self) -> tuple[str, ...]:
        """Every column used as (part of) a grouping factor, in order of appearance."""
        seen: dict[str, None] = {}
        for term in self.random:
            for name in term.grouping:
                seen.setdefault(name, None)
        return tuple(seen)

    def __str__(self) -> str:
        parts = [self.fixed] + [f"offset({o})" for o in self.offsets] + [str(term) for term in self.random]
        lhs = f"{self.response} " if self.response else ""
        return f"{lhs}~ " + " + ".join(parts)
