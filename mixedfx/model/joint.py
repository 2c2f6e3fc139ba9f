"""The mixed model as a TensorFlow Probability joint distribution.

:class:`MixedModel` binds a family to the design arrays of one data set (numpy only,
no TensorFlow state).  :func:`build_joint_distribution` turns it, with parameter
values, into a named, auto-batched :class:`tfd.JointDistributionNamedAutoBatched`:

* one random-effect array per term, ``[num_levels, dim]``: each level's coefficients
  are ``MultivariateNormalTriL(0, scale_tril_k)``, so a random intercept and slope
  get a full covariance;
* the response, from the family, given the linear predictor
  ``X @ fixed_effects + sum_k sum_c z_kc * effects_k[group_index_k, c]``.

Random effects enter by a gather on ``group_index``; a dense ``Z`` is never formed.
The distributions are written to broadcast over leading sample dimensions (chains,
draws), so the joint distribution does not need ``vectorized_map``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mixedfx._tf import tf, tfd
from mixedfx.design.random import RandomTermData
from mixedfx.exceptions import DataError
from mixedfx.model.families import Family

__all__ = [
    "RESPONSE",
    "joint_log_prob",
    "prior_log_prob",
    "response_log_prob",
    "gaussian_log_likelihood_float32",
    "MixedModel",
    "ModelParameters",
    "ModelTensors",
    "build_joint_distribution",
    "family_tensors",
    "linear_predictor",
    "numpy_linear_predictor",
    "random_effect_keys",
]

#: Name of the response in the joint distribution.
#:
#: Examples
#: --------
#: >>> import numpy as np
#: >>> from mixedfx.design import RandomTermData
#: >>> from mixedfx.model import RESPONSE, Gaussian, MixedModel, build_joint_distribution
#: >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
#: >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
#: >>> joint = build_joint_distribution(model.tensors(), fixed_effects=[3.0], random_scale_tril=[[[1.0]]],
#: ...                                  family=Gaussian(), family_params={"sigma": 1.0})
#: >>> RESPONSE, sorted(joint.sample(seed=(1, 2)))
#: ('response', ['g', 'response'])
RESPONSE = "response"


@dataclass(frozen=True)
class ModelParameters:
    """Parameter values of a mixed model (numpy; no TensorFlow state).

    Attributes
    ----------
    fixed_effects : numpy.ndarray of shape (n_fixed,)
    random_scale_tril : tuple of numpy.ndarray
        Per random term, the lower-triangular Cholesky factor ``L`` of the covariance
        ``L @ L.T`` of its per-level coefficients, shape ``(dim, dim)``.  A 1-D array
        of standard deviations is accepted for terms with one coefficient each.
    family_params : Mapping[str, float]
        The family's own parameters, e.g. ``{"sigma": 1.18}``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import ModelParameters
    >>> params = ModelParameters(np.array([1.0]), np.array([0.5, 2.0]), {"sigma": 1.0})
    >>> [L.tolist() for L in params.random_scale_tril]
    [[[0.5]], [[2.0]]]
    >>> params.random_cov[1].tolist()
    [[4.0]]
    """

    fixed_effects: np.ndarray
    random_scale_tril: tuple
    family_params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        scale = self.random_scale_tril
        if isinstance(scale, np.ndarray) and scale.ndim == 1:
            scale = tuple(np.array([[float(sd)]]) for sd in scale)
        object.__setattr__(self, "random_scale_tril", tuple(np.atleast_2d(np.asarray(L, dtype=np.float64)) for L in scale))
        object.__setattr__(self, "fixed_effects", np.asarray(self.fixed_effects, dtype=np.float64))

    @property
    def random_cov(self) -> tuple[np.ndarray, ...]:
        """Covariance matrix of each term's per-level coefficients."""
        return tuple(L @ L.T for L in self.random_scale_tril)

    def family_tensors(self, *, dtype=tf.float64) -> dict[str, tf.Tensor]:
        """``family_params`` as tensors of ``dtype``: what :meth:`Family.log_prob` takes.

        See :func:`family_tensors`.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import ModelParameters
        >>> params = ModelParameters(np.array([1.0]), np.array([0.5]), {"sigma": 2.0})
        >>> {name: float(value) for name, value in params.family_tensors().items()}
        {'sigma': 2.0}
        """
        return family_tensors(self.family_params, dtype=dtype)


def family_tensors(family_params: Mapping, *, dtype=tf.float64) -> dict[str, tf.Tensor]:
    """A family's parameters (numbers, arrays or tensors) as a dict of tensors of ``dtype``.

    The one conversion of family parameters for :meth:`Family.log_prob`,
    :meth:`Family.fisher_weight` and :meth:`Family.distribution`; tensors are cast,
    so it also serves inside a traced function.

    Parameters
    ----------
    family_params : Mapping[str, float or numpy.ndarray or tf.Tensor]
    dtype : tf.DType, default tf.float64

    Returns
    -------
    dict of str to tf.Tensor
        A new dict; ``family_params`` is not changed.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import family_tensors
    >>> tensors = family_tensors({"sigma": 1.5, "cutpoints": np.array([-1.0, 1.0])})
    >>> {name: (value.dtype.name, value.numpy().tolist()) for name, value in tensors.items()}
    {'sigma': ('float64', 1.5), 'cutpoints': ('float64', [-1.0, 1.0])}
    """
    return {name: tf.cast(value, dtype) if tf.is_tensor(value)
            else tf.constant(np.asarray(value, dtype=dtype.as_numpy_dtype), dtype)
            for name, value in family_params.items()}


@dataclass(frozen=True, eq=False)
class MixedModel:
    """A family bound to the design arrays of one data set.

    Attributes
    ----------
    family : Family
    fixed_design : numpy.ndarray of shape (n_rows, n_fixed)
    response : numpy.ndarray of shape (n_rows,) or None
        ``None`` for a model used only to simulate.
    random_terms : tuple of RandomTermData
    fixed_names : tuple of str
        Column names of ``fixed_design``.
    offset : numpy.ndarray of shape (n_rows,) or None
        Added to the linear predictor with coefficient one (``offset(...)`` terms).
    trials : numpy.ndarray of shape (n_rows,) or None
        Binomial trials per row.
    weights : numpy.ndarray of shape (n_rows,) or None
        Prior weights (lme4's ``weights=``), positive; ``None`` for all ones.  The family
        says what they mean (:meth:`~mixedfx.model.Family.weighted_log_prob`).
    family_design : mapping or numpy.ndarray of shape (n_rows, n_columns) or None
        The designs of the family's own linear models by key (``"zi"``: glmmTMB's
        ``ziformula``, ``"disp"``: its ``dispformula``; each family part takes its own,
        :meth:`~mixedfx.model.Family.own_design`), one such design, or ``None``.

    Examples
    --------
    Four rows in two groups (the estimators build it from the designs):

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> model.n_obs, model.keys
    (4, ('g',))

    Like lme4, it refuses a grouping factor with a level per row when the family has a
    residual sd:

    >>> one_per_row = RandomTermData("h", np.arange(4, dtype=np.int32), None, 4)
    >>> MixedModel(Gaussian(), np.ones((4, 1)), model.response, (one_per_row,), ("Intercept",)).check_identifiable()
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: number of levels of each grouping factor must be < number of observations (problems: h)
    """

    family: Family
    fixed_design: np.ndarray
    response: np.ndarray | None
    random_terms: tuple[RandomTermData, ...]
    fixed_names: tuple[str, ...]
    offset: np.ndarray | None = None
    trials: np.ndarray | None = None
    weights: np.ndarray | None = None
    family_design: Mapping[str, np.ndarray] | np.ndarray | None = None

    @property
    def family_rows(self) -> np.ndarray | None:
        """The per-row data the family's methods take as ``trials=``
        (:meth:`~mixedfx.model.Family.row_data`: the trials, or a zero-inflation design)."""
        return self.family.row_data(trials=self.trials, design=self.family_design)

    def __post_init__(self):
        n_rows = self.fixed_design.shape[0]
        if self.response is not None and self.response.shape != (n_rows,):
            raise DataError(f"response has shape {self.response.shape}, expected ({n_rows},)")
        for name in ("offset", "trials", "weights"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n_rows,):
                raise DataError(f"{name} has shape {np.shape(value)}, expected ({n_rows},)")
        designs = self.family_design if isinstance(self.family_design, Mapping) else {"": self.family_design}
        for key, design in designs.items():
            if design is not None and np.shape(design)[0] != n_rows:
                name = f"family_design[{key!r}]" if key else "family_design"
                raise DataError(f"{name} has {np.shape(design)[0]} rows, expected {n_rows}")
        for term in self.random_terms:
            if term.group_index.shape != (n_rows,):
                raise DataError(f"group index of {term.name!r} has {term.group_index.shape[0]} rows, expected {n_rows}")
            if (term.group_index < 0).any():
                raise DataError(f"grouping factor {term.name!r} has rows without a fitted level")
            predictor = getattr(term, "predictor", "cond")
            if predictor not in self.family.linear_predictors():
                raise DataError(f"random term {term.name!r} enters the {predictor!r} linear predictor, which the "
                                f"{self.family} family has not (it has: {', '.join(self.family.linear_predictors())})")

    @property
    def n_obs(self) -> int:
        return int(self.fixed_design.shape[0])

    @property
    def predictors(self) -> tuple[str, ...] | None:
        """Per random term, the linear predictor it enters; ``None`` when every term enters
        the model's own (``"cond"``), as for every model but one with random terms in
        glmmTMB's ``ziformula``."""
        tags = tuple(getattr(term, "predictor", "cond") for term in self.random_terms)
        return None if all(tag == "cond" for tag in tags) else tags

    @property
    def keys(self) -> tuple[str, ...]:
        """Names of the random-effect vectors in the joint distribution."""
        return random_effect_keys([term.name for term in self.random_terms])

    def exact_fixed_effects(self) -> np.ndarray | None:
        """The fixed effects when they reproduce the response exactly (the family's
        :meth:`~mixedfx.model.Family.exact_fit`), else ``None``."""
        return self.family.exact_fit(self.fixed_design, self.response, self.offset)

    def check_identifiable(self) -> None:
        """Refuse designs lme4 refuses: with a free dispersion, a grouping factor with
        as many levels as rows is confounded with the residual."""
        if self.family.has_dispersion:
            bad = [t.name for t in self.random_terms if t.num_levels >= self.n_obs]
            if bad:
                raise DataError(
                    "number of levels of each grouping factor must be < number of observations "
                    f"(problems: {', '.join(bad)})"
                )

    def row_scaled(self) -> tuple[MixedModel, float]:
        """For a family whose weights are precisions (``family.weights_scale_rows``): the
        unweighted model on rows scaled by ``sqrt(w)`` (``X``, ``z``, ``y`` and the
        offset) and the constant ``sum(log w) / 2`` that its log-likelihood lacks.
        The model itself, and 0, when it has no weights or its family multiplies the
        rows' log-likelihoods instead.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.design import RandomTermData
        >>> from mixedfx.model import Gaussian, MixedModel
        >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
        >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",),
        ...                    weights=np.array([1.0, 4.0, 1.0, 4.0]))
        >>> scaled, constant = model.row_scaled()
        >>> scaled.response.tolist(), scaled.random_terms[0].z.ravel().tolist(), round(constant, 4)
        ([1.0, 4.0, 4.0, 10.0], [1.0, 2.0, 1.0, 2.0], 1.3863)
        """
        if self.weights is None or not self.family.weights_scale_rows:
            return self, 0.0
        root = np.sqrt(self.weights)
        terms = tuple(dataclasses.replace(t, z=(np.ones((self.n_obs, 1)) if t.z is None
                                                 else np.asarray(t.z, dtype=np.float64).reshape(self.n_obs, -1))
                                          * root[:, None]) for t in self.random_terms)
        scaled = dataclasses.replace(
            self, fixed_design=self.fixed_design * root[:, None], random_terms=terms, weights=None,
            response=None if self.response is None else self.response * root,
            offset=None if self.offset is None else self.offset * root)
        return scaled, 0.5 * float(np.sum(np.log(self.weights)))

    def tensors(self, *, dtype=tf.float64) -> ModelTensors:
        """The design arrays as tensors (built on demand, never stored on the model)."""
        return ModelTensors.from_model(self, dtype=dtype)


@dataclass(frozen=True)
class ModelTensors:
    """Design arrays as tensors, the form the compiled inference code takes.

    ``row_weight`` (``[n_rows]``) and ``level_weight`` (per term, ``[num_levels]`` or
    ``None``) are optional 0/1 masks: the inference layer pads rows and levels up to
    shape buckets, so that data of similar sizes share one compiled program, and
    masks the padding out of every sum.  ``None`` means every row (level) counts.
    ``one_hot`` flags, per term, the terms whose coefficients
    :func:`linear_predictor` multiplies by one-hot indicators instead of gathering.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> tensors = model.tensors()  # ModelTensors.from_model(model)
    >>> tensors.keys, tensors.num_levels, tensors.dims
    (('g',), (2,), (1,))
    >>> tensors.group_index[0].dtype.name, tensors.response.dtype.name, tensors.z
    ('int32', 'float64', (None,))
    """

    fixed_design: tf.Tensor
    response: tf.Tensor | None
    group_index: tuple[tf.Tensor, ...]
    z: tuple[tf.Tensor | None, ...]
    num_levels: tuple[int, ...]
    keys: tuple[str, ...]
    dims: tuple[int, ...] = ()
    offset: tf.Tensor | None = None
    trials: tf.Tensor | None = None
    row_weight: tf.Tensor | None = None
    prior_weight: tf.Tensor | None = None
    level_weight: tuple[tf.Tensor | None, ...] | None = None
    one_hot: tuple[bool, ...] | None = None
    #: Per term, the linear predictor it enters (``None``: every term the model's own, ``"cond"``).
    predictors: tuple[str, ...] | None = None

    @classmethod
    def from_model(cls, model: MixedModel, *, dtype=tf.float64) -> ModelTensors:
        return cls(
            fixed_design=tf.constant(model.fixed_design, dtype=dtype),
            response=None if model.response is None else tf.constant(model.response, dtype=dtype),
            group_index=tuple(tf.constant(t.group_index, dtype=tf.int32) for t in model.random_terms),
            z=tuple(None if t.z is None else tf.constant(t.z, dtype=dtype) for t in model.random_terms),
            num_levels=tuple(int(t.num_levels) for t in model.random_terms),
            keys=model.keys,
            dims=tuple(int(t.dim) for t in model.random_terms),
            offset=None if model.offset is None else tf.constant(model.offset, dtype=dtype),
            trials=None if model.family_rows is None else tf.constant(model.family_rows, dtype=dtype),
            prior_weight=None if model.weights is None else tf.constant(model.weights, dtype=dtype),
            predictors=model.predictors,
        )


def random_effect_keys(names: Sequence[str]) -> tuple[str, ...]:
    """Unique Python identifiers for random-effect vectors, derived from term names.

    Examples
    --------
    >>> from mixedfx.model import random_effect_keys
    >>> random_effect_keys(["s", "a:b", "a.b", "response"])
    ('s', 'a_b', 'a_b_2', 'response_2')
    """
    keys: list[str] = []
    taken = {RESPONSE}
    for name in names:
        base = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "effect"
        if base[0].isdigit():
            base = f"g_{base}"
        key, k = base, 1
        while key in taken:
            k += 1
            key = f"{base}_{k}"
        taken.add(key)
        keys.append(key)
    return tuple(keys)


def numpy_linear_predictor(fixed_design, fixed_effects, random_effects, terms, *, offset=None) -> np.ndarray:
    """The linear predictor of rows in numpy.

    That is ``X @ fixed_effects + offset`` plus, for each random term ``k``, the row-wise
    product of ``z_k`` with ``random_effects_k[group_index_k]``, summed over its columns.

    The one numpy implementation, used wherever the fitted linear predictor of rows is
    needed outside a compiled program (prediction, residuals, starting values,
    standard errors).  A row whose level has index ``-1`` (unseen at fit time) gets a
    zero random effect for that term.

    Parameters
    ----------
    fixed_design : numpy.ndarray of shape (n_rows, n_fixed)
    fixed_effects : numpy.ndarray of shape (n_fixed,)
    random_effects : sequence of numpy.ndarray
        Per term, ``(num_levels, dim)``; may be shorter than ``terms`` only if both
        are empty.
    terms : sequence of RandomTermData
        Per term, the rows' ``group_index`` and ``z``.
    offset : numpy.ndarray of shape (n_rows,), optional

    Returns
    -------
    numpy.ndarray of shape (n_rows,)

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import numpy_linear_predictor
    >>> term = RandomTermData("g", np.array([0, 1, -1], dtype=np.int32), None, 2)
    >>> numpy_linear_predictor(np.ones((3, 1)), np.array([3.0]), [np.array([[-1.0], [1.0]])], [term]).tolist()
    [2.0, 4.0, 3.0]
    """
    eta = np.asarray(fixed_design, dtype=np.float64) @ np.asarray(fixed_effects, dtype=np.float64)
    if offset is not None:
        eta += np.asarray(offset, dtype=np.float64)  # in place: a row vector fewer at ten million rows
    eta += numpy_random_part(random_effects, terms, predictor="cond", n_rows=eta.shape[0])
    return eta


def numpy_random_part(random_effects, terms, *, predictor: str, n_rows: int) -> np.ndarray:
    """The random part of linear predictor ``predictor`` of rows in numpy: the sum over
    the terms that enter it (:attr:`~mixedfx.design.RandomTermData.predictor`) of ``z_k``
    times ``random_effects_k[group_index_k]``; a level with index ``-1`` gives zero.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model.joint import numpy_random_part
    >>> cond = RandomTermData("g", np.array([0, 1, -1], dtype=np.int32), None, 2)
    >>> zi = RandomTermData("g", np.array([0, 1, -1], dtype=np.int32), None, 2, predictor="zi")
    >>> effects = [np.array([[-1.0], [1.0]]), np.array([[0.5], [2.0]])]
    >>> numpy_random_part(effects, [cond, zi], predictor="zi", n_rows=3).tolist()
    [0.5, 2.0, 0.0]
    """
    part = np.zeros(n_rows)
    for effects, term in zip(random_effects, terms):
        if getattr(term, "predictor", "cond") != predictor:
            continue
        effects = np.asarray(effects, dtype=np.float64)
        index = np.asarray(term.group_index)
        if index.size and index.min() >= 0:  # every level seen (the training rows): no mask
            rows = effects[index]
        else:
            rows = np.where(index[:, None] >= 0, effects[np.maximum(index, 0)], 0.0)
        part += rows[:, 0] if term.z is None else np.sum(rows * term.z, axis=1)
    return part


def numpy_family_params(family: Family, family_params, random_effects, terms, *, n_rows: int) -> Mapping:
    """``family_params`` with the random parts (numpy, per row) of the family's own linear
    predictors that some of ``terms`` enter (glmmTMB's ``ziformula`` terms), as the family
    reads them (:meth:`~mixedfx.model.Family.with_predictor_offsets`); ``family_params``
    itself when every term enters ``"cond"``.  ``random_effects`` may carry a leading
    sample dimension (``(n, num_levels, dim)`` per term): the parts then have one too.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Poisson
    >>> from mixedfx.model.joint import numpy_family_params
    >>> term = RandomTermData("g", np.array([0, 1, 1], dtype=np.int32), None, 2, predictor="zi")
    >>> family = Poisson().zero_inflated(("Intercept",))
    >>> params = numpy_family_params(family, {"zi": np.array([0.0])}, [np.array([[0.5], [-1.0]])], [term], n_rows=3)
    >>> params["zi_offset"].tolist()
    [0.5, -1.0, -1.0]
    """
    keys = [key for key in dict.fromkeys(getattr(t, "predictor", "cond") for t in terms) if key != "cond"]
    if not keys:
        return family_params
    sample_shape = np.shape(random_effects[0])[:-2]

    def part(key):
        if not sample_shape:
            return numpy_random_part(random_effects, terms, predictor=key, n_rows=n_rows)
        flat = [np.reshape(b, (-1,) + np.shape(b)[-2:]) for b in random_effects]
        parts = [numpy_random_part([b[s] for b in flat], terms, predictor=key, n_rows=n_rows)
                 for s in range(flat[0].shape[0])]
        return np.reshape(np.stack(parts), sample_shape + (n_rows,))

    return family.with_predictor_offsets(dict(family_params), {key: part(key) for key in keys})


def linear_predictor(fixed_design, fixed_effects, random_effects, group_index, z, offset=None, *, one_hot=None):
    """``X @ fixed_effects + offset + sum_k sum_c z_kc * random_effects_k[..., group_index_k, c]``.

    Each ``random_effects_k`` has shape ``sample_shape + [num_levels, dim]``; leading
    sample dimensions (chains, draws) carry through to the result, which has shape
    ``sample_shape + [n_rows]``.  A term's coefficients are gathered by its group
    index; a term flagged in ``one_hot`` (a tuple of bools, per term) is instead
    multiplied by the rows' one-hot level indicators, so that its gradient is a
    matrix product rather than a scatter-add, which GPUs run slowly when many rows
    share few levels.  Both give the same numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> from mixedfx.model import linear_predictor
    >>> tensors = model.tensors()
    >>> effects = np.array([[-1.0], [1.0]])  # one intercept per level
    >>> linear_predictor(tensors.fixed_design, np.array([3.0]), [effects], tensors.group_index, tensors.z).numpy()
    array([2., 2., 4., 4.])
    >>> draws = np.stack([effects, 2 * effects])  # a leading sample dimension
    >>> linear_predictor(tensors.fixed_design, np.array([3.0]), [draws], tensors.group_index, tensors.z).numpy()
    array([[2., 2., 4., 4.],
           [1., 1., 5., 5.]])
    """
    eta = tf.linalg.matvec(fixed_design, fixed_effects)
    if offset is not None:
        eta = eta + offset
    one_hot = one_hot or (False,) * len(random_effects)
    for effects, index, weight, dense in zip(random_effects, group_index, z, one_hot):
        if dense:
            indicators = tf.one_hot(index, tf.shape(effects)[-2], dtype=effects.dtype)  # [n_rows, num_levels]
            part = tf.einsum("nq,...qd->...nd", indicators, effects)
        else:
            part = tf.gather(effects, index, axis=-2)  # [..., n_rows, dim]
        eta = eta + (part[..., 0] if weight is None else tf.reduce_sum(part * weight, axis=-1))
    return eta


def family_inputs(tensors: ModelTensors, effects, *, fixed_effects, family: Family, family_params):
    """``(eta, parameters)``: what the family's methods take given the random effects.

    ``eta`` is :func:`linear_predictor` over the terms that enter the model's own linear
    predictor (``"cond"``); the random part of each of the family's own linear
    predictors (``tensors.predictors``; glmmTMB's ``zi``) is summed the same way and
    handed to the family, which says how it reads it
    (:meth:`~mixedfx.model.Family.with_predictor_offsets`).  No layer asks which family
    it is.  Leading sample dimensions of ``effects`` carry through.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, Poisson
    >>> from mixedfx.model.joint import family_inputs
    >>> g = np.array([0, 0, 1, 1], dtype=np.int32)
    >>> terms = (RandomTermData("g", g, None, 2), RandomTermData("g", g, None, 2, predictor="zi"))
    >>> family = Poisson().zero_inflated(("Intercept",))
    >>> model = MixedModel(family, np.ones((4, 1)), np.array([0.0, 1.0, 2.0, 0.0]), terms, ("Intercept",),
    ...                    family_design={"zi": np.ones((4, 1))})
    >>> eta, params = family_inputs(model.tensors(), [np.array([[-1.0], [1.0]]), np.array([[0.5], [2.0]])],
    ...                             fixed_effects=np.array([0.0]), family=family, family_params={"zi": [0.0]})
    >>> eta.numpy().tolist(), params["zi_offset"].numpy().tolist()
    ([-1.0, -1.0, 1.0, 1.0], [0.5, 0.5, 2.0, 2.0])
    """
    eta, own = linear_predictors(tensors, effects, fixed_effects=fixed_effects)
    if not own:
        return eta, family_params
    return eta, family.with_predictor_offsets(family_tensors(family_params, dtype=tensors.fixed_design.dtype), own)


def linear_predictors(tensors: ModelTensors, effects, *, fixed_effects):
    """``(eta, own)``: the model's linear predictor (the terms that enter ``"cond"``,
    with the fixed part and the offset) and, by key, the random part of each of the
    family's own linear predictors (``tensors.predictors``; glmmTMB's ``zi``), ``{}``
    when every term enters ``"cond"`` (see :func:`family_inputs`).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, Poisson
    >>> from mixedfx.model.joint import linear_predictors
    >>> g = np.array([0, 1], dtype=np.int32)
    >>> terms = (RandomTermData("g", g, None, 2), RandomTermData("g", g, None, 2, predictor="zi"))
    >>> model = MixedModel(Poisson().zero_inflated(("Intercept",)), np.ones((2, 1)), np.array([0.0, 1.0]), terms,
    ...                    ("Intercept",), family_design={"zi": np.ones((2, 1))})
    >>> eta, own = linear_predictors(model.tensors(), [np.array([[-1.0], [1.0]]), np.array([[0.5], [2.0]])],
    ...                              fixed_effects=np.array([1.0]))
    >>> eta.numpy().tolist(), own["zi"].numpy().tolist()
    ([0.0, 2.0], [0.5, 2.0])
    """
    dtype = tensors.fixed_design.dtype
    fixed_effects = tf.convert_to_tensor(fixed_effects, dtype=dtype)
    predictors = tensors.predictors or ("cond",) * len(effects)
    one_hot = tensors.one_hot or (False,) * len(effects)

    def part(key, fixed_design, beta, offset):
        chosen = [k for k, tag in enumerate(predictors) if tag == key]
        return linear_predictor(fixed_design, beta, [effects[k] for k in chosen],
                                [tensors.group_index[k] for k in chosen], [tensors.z[k] for k in chosen], offset,
                                one_hot=tuple(one_hot[k] for k in chosen))

    eta = part("cond", tensors.fixed_design, fixed_effects, tensors.offset)
    own = {key: part(key, tensors.fixed_design[:, :0], fixed_effects[:0], None)
           for key in dict.fromkeys(predictors) if key != "cond"}
    return eta, own


def build_joint_distribution(
    tensors: ModelTensors,
    *,
    fixed_effects,
    random_scale_tril,
    family: Family,
    family_params: Mapping[str, tf.Tensor],
    name: str | None = None,
) -> tfd.JointDistributionNamedAutoBatched:
    """Build the joint distribution of random effects and response.

    Parameters
    ----------
    tensors : ModelTensors
        Design arrays.
    fixed_effects : Tensor of shape (n_fixed,)
    random_scale_tril : sequence of Tensor
        Per term, the Cholesky factor of its coefficients' covariance, ``(dim, dim)``.
    family : Family
    family_params : Mapping[str, Tensor]
    name : str, optional

    Returns
    -------
    tfd.JointDistributionNamedAutoBatched
        Components named by :attr:`ModelTensors.keys`, one per random term with
        event shape ``[num_levels, dim]`` (each level's coefficients are
        ``MultivariateNormalTriL(0, scale_tril)``), and ``"response"`` with event
        shape ``[n_rows]``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> from mixedfx.model import build_joint_distribution
    >>> joint = build_joint_distribution(model.tensors(), fixed_effects=[3.0], random_scale_tril=[[[1.0]]],
    ...                                  family=Gaussian(), family_params={"sigma": 1.0})
    >>> {name: value.shape.as_list() for name, value in joint.sample(seed=(1, 2)).items()}
    {'g': [2, 1], 'response': [4]}
    >>> round(float(joint.log_prob({"g": np.array([[-1.0], [1.0]]), "response": model.response})), 4)
    -7.5136
    """
    dtype = tensors.fixed_design.dtype
    fixed_effects = tf.convert_to_tensor(fixed_effects, dtype=dtype)
    family_params = family_tensors(family_params, dtype=dtype)
    components: dict[str, object] = {}
    if not tensors.keys:
        raise ValueError("a mixed model needs at least one random term")
    for key, num_levels, scale_tril in zip(tensors.keys, tensors.num_levels, random_scale_tril):
        scale_tril = tf.convert_to_tensor(scale_tril, dtype=dtype)
        if scale_tril.shape[-1] == 1:  # one coefficient per level: a plain Normal is the same, and lighter
            components[key] = tfd.Sample(
                tfd.Normal(loc=tf.zeros([], dtype=dtype), scale=scale_tril[0, 0]), sample_shape=[num_levels, 1], name=key
            )
        else:
            components[key] = tfd.Sample(
                tfd.MultivariateNormalTriL(loc=tf.zeros(tf.shape(scale_tril)[-1:], dtype=dtype), scale_tril=scale_tril),
                sample_shape=num_levels,
                name=key,
            )
    keys = tensors.keys

    def response(**effects):
        eta, params = family_inputs(tensors, [effects[key] for key in keys], fixed_effects=fixed_effects,
                                    family=family, family_params=family_params)
        return tfd.Independent(family.distribution(eta, params, trials=tensors.trials),
                               reinterpreted_batch_ndims=1, name=RESPONSE)

    # The joint distribution reads a component's dependencies from its argument names.
    response.__signature__ = inspect.Signature(
        [inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD) for key in keys]
    )
    components[RESPONSE] = response
    return tfd.JointDistributionNamedAutoBatched(
        components, use_vectorized_map=False, name=name or "MixedModel"
    )


def joint_log_prob(tensors: ModelTensors, effects, *, fixed_effects, random_scale_tril, family: Family, family_params):
    """``log p(y, b)``: the value of :func:`build_joint_distribution`'s ``log_prob``.

    Computed directly from the same components, for the inference loop: a joint
    distribution resolves its structure by tracing a sample of every component, and
    some samplers (the negative binomial's gamma draws) cannot be compiled by XLA.
    ``effects`` may carry leading sample dimensions, which the result keeps.  It is
    :func:`prior_log_prob` plus :func:`response_log_prob`.


    Examples
    --------
    The same number as :func:`build_joint_distribution`'s ``log_prob``:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> from mixedfx.model import joint_log_prob
    >>> effects = np.array([[-1.0], [1.0]])
    >>> value = joint_log_prob(model.tensors(), [effects], fixed_effects=np.array([3.0]),
    ...                        random_scale_tril=[np.array([[1.0]])], family=Gaussian(),
    ...                        family_params={"sigma": np.float64(1.0)})
    >>> round(float(value), 4)
    -7.5136
    """
    prior = prior_log_prob(effects, random_scale_tril=random_scale_tril, level_weight=tensors.level_weight,
                           dtype=tensors.fixed_design.dtype)
    return prior + response_log_prob(tensors, effects, fixed_effects=fixed_effects, family=family,
                                     family_params=family_params)


def prior_log_prob(effects, *, random_scale_tril, level_weight=None, dtype=tf.float64):
    """``log p(b)``: each level's coefficients ``N(0, L L')`` per term, summed over levels.

    ``level_weight`` (per term, a 0/1 mask or ``None``) leaves padded levels out.
    Leading sample dimensions of ``effects`` carry through.  The density is
    ``tfd.MultivariateNormalTriL``'s (``-|L^-1 b|^2 / 2 - sum log|diag L| - d log(2 pi) / 2``),
    written out: building TFP's distribution objects took a tenth of a second of
    tracing per call of a compiled fit, and the fitting loop traces this twice
    (tests/test_model.py holds it to the JointDistribution's prior).
    """
    total = 0.0
    level_weight = level_weight or (None,) * len(effects)
    for values, scale_tril, weight in zip(effects, random_scale_tril, level_weight):
        scale_tril = tf.convert_to_tensor(scale_tril, dtype=dtype)
        values = tf.convert_to_tensor(values, dtype=dtype)
        dim = scale_tril.shape[-1]
        # L^-1 b for every level at once: the levels as the columns of one right-hand side
        whitened = tf.linalg.triangular_solve(scale_tril, tf.transpose(tf.reshape(values, [-1, dim])), lower=True)
        squares = tf.reshape(tf.reduce_sum(tf.square(whitened), axis=0), tf.shape(values)[:-1])
        constant = tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(scale_tril)))) + 0.5 * dim * np.log(2 * np.pi)
        prior = -0.5 * squares - constant
        total = total + tf.reduce_sum(prior if weight is None else prior * weight, axis=-1)
    return total


def response_log_prob(tensors: ModelTensors, effects, *, fixed_effects, family: Family, family_params):
    """``log p(y | b)``: the response's log-likelihood summed over the rows of ``tensors``
    (with the prior weights ``tensors.prior_weight`` as the family reads them, and the
    padding mask ``tensors.row_weight``, when they are set)."""
    eta, params = family_inputs(tensors, effects, fixed_effects=fixed_effects, family=family,
                                family_params=family_params)
    likelihood = family.weighted_log_prob(eta, params, tensors.response, trials=tensors.trials,
                                          weights=tensors.prior_weight)
    if tensors.row_weight is not None:
        likelihood = likelihood * tensors.row_weight
    return tf.reduce_sum(likelihood, axis=-1)


def gaussian_log_likelihood_float32(tensors, effects, *, fixed_effects, sigma, regression_response):
    """The Gaussian log-likelihood of rows given the random effects, with the per-row
    random part in float32.

    ``(y - offset - X beta) / sigma`` is formed in float64 and only then rounded to
    float32, so a response far from zero (a large mean, carried by the intercept) loses
    nothing, and a response of any magnitude neither overflows nor underflows; the
    random effects over ``sigma`` are rounded to float32, gathered per row and
    subtracted, and each row's weighted squared residual is summed in float64.  The
    gradient in the random effects, a scatter-add of the residuals to the levels, runs
    in float32 too.  The residuals are of the order of the random effects and the
    noise, so the rounding error per row is about ``1e-7`` of them, and the sum's about
    ``1e-7 sqrt(n)``: Hamiltonian Monte Carlo only needs the differences of the log
    density between two states to a few hundredths, and the Metropolis correction keeps
    the draws exact for the density computed.

    Parameters
    ----------
    tensors : ModelTensors
        The rows (float64), with ``row_weight``.
    effects : sequence of tf.Tensor
        Per term, ``[..., num_levels, dim]`` (float64; leading chain dimensions).
    fixed_effects : tf.Tensor
        ``[p]``, or ``[..., p]`` per chain.
    sigma : tf.Tensor
        The residual sd.
    regression_response : tf.Tensor
        ``y - offset`` per row (float64).

    Returns
    -------
    tf.Tensor
        float64, shape ``[...]``.

    Examples
    --------
    Equal to the float64 log-likelihood to within 1e-7 of its size, even for a response
    of the order of a million:

    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, gaussian_log_likelihood_float32
    >>> from mixedfx.model.joint import response_log_prob
    >>> rng = np.random.default_rng(0)
    >>> g = rng.integers(0, 50, 2000).astype(np.int32)
    >>> effects = rng.normal(size=(50, 1))
    >>> y = 1e6 + effects[g, 0] + rng.normal(size=2000)
    >>> model = MixedModel(Gaussian(), np.ones((2000, 1)), y, (RandomTermData("g", g, None, 50),), ("Intercept",))
    >>> tensors = model.tensors()
    >>> exact = response_log_prob(tensors, [tf.constant(effects)], fixed_effects=tf.constant([1e6], tf.float64),
    ...                           family=Gaussian(), family_params={"sigma": tf.constant(1.0, tf.float64)})
    >>> mixed = gaussian_log_likelihood_float32(tensors, [tf.constant(effects)],
    ...                                         fixed_effects=tf.constant([1e6], tf.float64),
    ...                                         sigma=tf.constant(1.0, tf.float64), regression_response=tensors.response)
    >>> bool(abs(float(mixed) / float(exact) - 1) < 1e-7)
    True
    """
    low = tf.float32
    sigma = tf.convert_to_tensor(sigma, tf.float64)
    fixed_effects = tf.convert_to_tensor(fixed_effects, tf.float64)
    # In units of sigma: whatever the response's magnitude, float32 neither overflows nor underflows.
    fixed_residual = (regression_response - tf.linalg.matvec(tensors.fixed_design, fixed_effects)) / sigma  # [..., n]
    effects = [tf.cast(e / sigma, low) for e in effects]
    z = tuple(None if w is None else tf.cast(w, low) for w in tensors.z)
    if any(tensors.one_hot or ()):
        random_part = linear_predictor(tf.zeros_like(tensors.fixed_design[:, :0], dtype=low), tf.zeros([0], low),
                                       effects, tensors.group_index, z, one_hot=tensors.one_hot)
        residual = tf.cast(fixed_residual, low) - random_part
        row_axis = -1
    else:
        # Rows first, chains last: each row gathers (and its gradient scatters) the
        # chains' coefficients of its level as one contiguous block.
        chain_rank = len(effects[0].shape) - 2
        residual = tf.cast(tf.experimental.numpy.moveaxis(fixed_residual, -1, 0) if fixed_residual.shape.rank > 1
                           else tf.reshape(fixed_residual, [-1] + [1] * chain_rank), low)
        for e, index, w in zip(effects, tensors.group_index, z):
            part = tf.gather(tf.experimental.numpy.moveaxis(e, -2, 0), index)  # [n, ..., dim]
            if w is None:
                part = part[..., 0]
            else:
                part = tf.reduce_sum(part * tf.reshape(w, [-1] + [1] * chain_rank + [w.shape[-1]]), axis=-1)
            residual = residual - part
        row_axis = 0
    squares = tf.square(residual)
    if tensors.row_weight is not None:
        weight = tf.cast(tensors.row_weight, low)
        squares = squares * (weight if row_axis == -1 else tf.reshape(weight, [-1] + [1] * (squares.shape.rank - 1)))
        n_rows = tf.reduce_sum(tensors.row_weight)
    else:
        n_rows = tf.cast(tf.shape(residual)[row_axis], tf.float64)
    return (-0.5 * tf.reduce_sum(tf.cast(squares, tf.float64), axis=row_axis)
            - n_rows * (tf.math.log(sigma) + 0.5 * np.log(2.0 * np.pi)))
