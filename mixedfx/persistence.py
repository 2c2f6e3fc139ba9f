"""Saving a fitted estimator to a plain file, and loading it back: :func:`load`.

``model.save(path)`` writes one zip file with two members:

``model.json``
    The header (``format``, ``format_version``, ``mixedfx_version``, ``estimator``),
    the estimator's parameters (``params``) and its fitted attributes (``fitted``):
    the formula spec, the family, the designs (formulaic's encoding state of the
    fixed part: categorical levels, centring and scaling constants, spline knots),
    the grouping factors' levels, the names and the scalar results.
``arrays.npz``
    Every numeric array (parameters, tables' values, the training design matrices,
    the fit's trace), read back with ``allow_pickle=False``.

No pickle and no TensorFlow object is stored.  Objects are written as tagged JSON:
``{"__tuple__": [...]}``, ``{"__dict__": [[key, value], ...]}`` (keys of any JSON
type), ``{"__ndarray__": "a12"}`` (a member of ``arrays.npz``), ``{"__float__":
"nan"}``, pandas indexes, series and frames, and mixedfx's own records as
``{"__record__": "FixedDesign", "fields": {...}}``; a record is rebuilt only from
the fixed list :data:`_RECORDS` of mixedfx classes, so loading runs no stored code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd
from formulaic import Formula, ModelSpec
from formulaic.materializers.types.enums import ClusterBy, NAAction
from formulaic.parser.types.factor import Factor
from sklearn.utils.validation import check_is_fitted

from mixedfx.design.random import GroupingFactor, RandomDesign, RandomTermData, RandomTermDesign
from mixedfx.design.fixed import FixedDesign
from mixedfx.design.response import ResponseDesign
from mixedfx.estimator import MixedEffectsClassifier, MixedEffectsRegressor
from mixedfx.estimator.base import MODEL_FORMAT, format_mismatch
from mixedfx.exceptions import ModelFormatError, ParameterError
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec
from mixedfx.inference import FitSummary, FixedIterations, MCEMOptions, MonteCarloErrorRule
from mixedfx.model import ModelParameters
from mixedfx.model import families as _families
from mixedfx.model import glmmtmb_families as _glmmtmb_families
from mixedfx.model.dispersion_model import DispersionModel
from mixedfx.model import truncated as _truncated
from mixedfx.model.zero_inflation import Hurdle, ZeroInflated
from mixedfx.model.joint import MixedModel

__all__ = ["save", "load"]

_MAGIC = "mixedfx-model"
_ESTIMATORS = {cls.__name__: cls for cls in (MixedEffectsRegressor, MixedEffectsClassifier)}
#: The classes a saved file may name: mixedfx's frozen records, nothing else.
_RECORDS = {cls.__name__: cls for cls in (
    FormulaSpec, RandomTermSpec, FixedDesign, ResponseDesign, RandomDesign, RandomTermDesign, GroupingFactor,
    RandomTermData, MixedModel, ModelParameters, FitSummary, MCEMOptions, MonteCarloErrorRule, FixedIterations,
    *(getattr(_families, name) for name in ("Gaussian", "Binomial", "Bernoulli", "Poisson", "NegativeBinomial",
                                            "Ordinal")),
    *(getattr(_glmmtmb_families, name) for name in _glmmtmb_families.__all__), ZeroInflated, DispersionModel,
    *(getattr(_truncated, name) for name in _truncated.__all__), Hurdle)}


def save(model, path) -> Path:
    """Write a fitted estimator to ``path``: a zip of ``model.json`` and ``arrays.npz``.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    path : str or os.PathLike
        The file to write (replaced if it exists); ``.mixedfx`` is a good suffix.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ModelFormatError
        If a part of the model cannot be stored plainly (a stopping rule of your own
        class, a formula transform whose state is not numbers), naming it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from mixedfx.persistence import save
    >>> path = save(model, pathlib.Path(tempfile.mkdtemp()) / "model.mixedfx")
    >>> mixedfx.load(path).predict(data.head(2)).tolist() == model.predict(data.head(2)).tolist()
    True
    """
    check_is_fitted(model, "fixed_effects_")
    if type(model).__name__ not in _ESTIMATORS:
        raise ParameterError("save() writes MixedEffectsRegressor and MixedEffectsClassifier, "
                             f"not {type(model).__name__}")
    arrays: dict[str, np.ndarray] = {}
    params = {**model.get_params(deep=False), "distribute": None}  # a strategy names this machine's devices
    document = {
        "format": _MAGIC, "format_version": MODEL_FORMAT, "mixedfx_version": _version(),
        "estimator": type(model).__name__,
        "params": {name: _encode(value, arrays, name) for name, value in params.items()},
        "fitted": {name: _encode(value, arrays, name) for name, value in vars(model).items()
                   if name.endswith("_") and not name.startswith("_") and name not in params},
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.json", json.dumps(document, indent=1, allow_nan=False))
        archive.writestr("arrays.npz", buffer.getvalue())
    return path


def load(path):
    """Load an estimator written by ``model.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :meth:`MixedEffectsRegressor.save` (or the classifier's).

    Returns
    -------
    MixedEffectsRegressor or MixedEffectsClassifier
        The fitted estimator: the same parameters and fitted attributes, so the same
        predictions, tables and summary.

    Raises
    ------
    ModelFormatError
        If the file is not a saved mixedfx model, or was written in another format
        (by another mixedfx version, which the message names).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.mixedfx"
    >>> model.save(path)
    >>> loaded = mixedfx.load(path)
    >>> loaded.fixed_effects_.equals(model.fixed_effects_)
    True
    """
    try:
        with zipfile.ZipFile(path) as archive:
            document = json.loads(archive.read("model.json"))
            with np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError) as error:
        raise ModelFormatError(f"{str(path)!r} is not a model saved by mixedfx ({error})") from None
    if not isinstance(document, dict) or document.get("format") != _MAGIC:
        raise ModelFormatError(f"{str(path)!r} is not a model saved by mixedfx (its model.json has no mixedfx header)")
    if document.get("format_version") != MODEL_FORMAT:
        raise ModelFormatError(format_mismatch(document.get("mixedfx_version"), document.get("format_version")))
    cls = _ESTIMATORS.get(document.get("estimator"))
    if cls is None:
        raise ModelFormatError(f"{str(path)!r} holds an unknown estimator {document.get('estimator')!r}")
    try:
        estimator = cls(**{name: _decode(value, arrays) for name, value in document["params"].items()})
        estimator.__dict__.update({name: _decode(value, arrays) for name, value in document["fitted"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, ModelFormatError):
            raise
        raise ModelFormatError(f"{str(path)!r} is damaged: {type(error).__name__}: {error}") from None
    return estimator


def _version() -> str:
    from mixedfx import __version__

    return __version__


# -- encoding ------------------------------------------------------------------------------
def _encode(value, arrays: dict, where: str):
    """``value`` as tagged JSON; numeric arrays go to ``arrays``.  ``where`` names it in errors."""
    if value is None or isinstance(value, (bool, str, int)) and not isinstance(value, Enum):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.generic):
        return _encode(value.item(), arrays, where)
    if isinstance(value, np.ndarray):
        return _encode_array(value, arrays, where)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{k}]") for k, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{where}[{k}]") for k, v in enumerate(value)]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, arrays, where), _encode(v, arrays, f"{where}[{k!r}]")]
                             for k, v in value.items()]}
    if isinstance(value, (pd.Index, pd.Series, pd.DataFrame)):
        return _encode_pandas(value, arrays, where)
    if isinstance(value, ModelSpec):
        return _encode_model_spec(value, arrays, where)
    if dataclasses.is_dataclass(value) and _RECORDS.get(type(value).__name__) is type(value):
        return {"__record__": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name), arrays, f"{where}.{f.name}")
                           for f in dataclasses.fields(value)}}
    raise ModelFormatError(f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} cannot be "
                           "stored plainly (save() stores numbers, text and mixedfx's own records)")


def _encode_array(value: np.ndarray, arrays: dict, where: str):
    if value.dtype.kind in "biufc":
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__ndarray__": key}
    if value.dtype.kind in "OUS":
        return {"__objects__": [_encode(v, arrays, where) for v in value.ravel().tolist()],
                "dtype": value.dtype.str if value.dtype.kind != "O" else "O", "shape": list(value.shape)}
    raise ModelFormatError(f"cannot save {where}: an array of dtype {value.dtype}")


def _encode_pandas(value, arrays: dict, where: str):
    if isinstance(value, pd.DataFrame):
        return {"__frame__": {"columns": _encode(value.columns, arrays, where),
                              "index": _encode(value.index, arrays, where),
                              "data": [_encode(value.iloc[:, j], arrays, f"{where}[{value.columns[j]!r}]")
                                       for j in range(value.shape[1])]}}
    if isinstance(value, pd.Series) and isinstance(value.dtype, pd.CategoricalDtype):
        return {"__catseries__": {"categories": _encode(value.cat.categories, arrays, where),
                                  "codes": _encode(np.asarray(value.cat.codes), arrays, where),
                                  "ordered": bool(value.cat.ordered), "index": _encode(value.index, arrays, where),
                                  "name": _encode(value.name, arrays, where)}}
    if isinstance(value, pd.Series):
        return {"__series__": {"values": _encode_column(value, arrays, where), "dtype": str(value.dtype),
                               "index": _encode(value.index, arrays, where),
                               "name": _encode(value.name, arrays, where)}}
    if isinstance(value, pd.MultiIndex):
        return {"__multiindex__": {"levels": [_encode(level, arrays, where) for level in value.levels],
                                   "codes": [_encode(np.asarray(c), arrays, where) for c in value.codes],
                                   "names": _encode(list(value.names), arrays, where)}}
    if isinstance(value, pd.RangeIndex):
        return {"__range__": [value.start, value.stop, value.step], "name": _encode(value.name, arrays, where)}
    if isinstance(value, pd.CategoricalIndex):
        return {"__categorical__": {"categories": _encode(value.categories, arrays, where),
                                    "codes": _encode(np.asarray(value.codes), arrays, where),
                                    "ordered": bool(value.ordered), "name": _encode(value.name, arrays, where)}}
    return {"__index__": {"values": _encode_column(value, arrays, where), "dtype": str(value.dtype),
                          "name": _encode(value.name, arrays, where)}}


def _encode_column(values, arrays: dict, where: str):
    """A series' or index's values: numeric ones in ``arrays``, dates and durations as their
    integer ticks (the dtype, stored beside them, says which unit and zone), others element by element."""
    dtype = values.dtype
    if dtype.kind in "mM" and hasattr(values.array, "asi8"):
        return _encode(np.asarray(values.array.asi8), arrays, where)
    if isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "mM":
        raise ModelFormatError(f"cannot save {where}: values of dtype {dtype}")
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc":
        return _encode(values.to_numpy(), arrays, where)
    return [_encode(v, arrays, where) for v in values.tolist()]


def _encode_model_spec(spec: ModelSpec, arrays: dict, where: str):
    """What replays formulaic's encoding: the formula's text, each factor's kind and
    categories (the contrasts follow from the text), each stateful transform's state."""
    if spec.materializer != "pandas" or spec.materializer_params:
        raise ModelFormatError(f"cannot save {where}: formulaic materializer {spec.materializer!r}")
    encoder = {}
    for factor, (kind, state) in spec.encoder_state.items():
        kept = {key: value for key, value in state.items() if key != "contrasts"}
        encoder[str(factor)] = [getattr(kind, "value", kind), _encode_state(kept, arrays, f"{where} term {factor!r}")]
    transforms = {str(term): _encode_state(state, arrays, f"{where} term {term!r}")
                  for term, state in spec.transform_state.items()}
    return {"__modelspec__": {"formula": str(spec.formula), "ensure_full_rank": bool(spec.ensure_full_rank),
                              "na_action": spec.na_action.value, "output": spec.output,
                              "cluster_by": spec.cluster_by.value, "encoder_state": encoder,
                              "transform_state": transforms}}


def _encode_state(state, arrays: dict, where: str):
    try:
        return _encode(state, arrays, where)
    except ModelFormatError as error:
        raise ModelFormatError(f"{error}; the formula's transform cannot be saved: write it with plain columns "
                               "or formulaic's stateful transforms") from None


# -- decoding ------------------------------------------------------------------------------
def _decode(value, arrays: dict):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, body), = [(k, v) for k, v in value.items() if k.startswith("__")] or [(None, None)]
    if tag is None:
        raise ModelFormatError(f"unreadable model.json entry {value!r}")
    return _DECODERS[tag](body, value, arrays)


def _decode_record(name, value, arrays):
    cls = _RECORDS.get(name)
    if cls is None:
        raise ModelFormatError(f"the saved model names an unknown record {name!r}")
    names = {field.name for field in dataclasses.fields(cls)}
    if set(value["fields"]) != names:
        raise ModelFormatError(f"the saved {name} has fields {sorted(value['fields'])}, not {sorted(names)}")
    record = object.__new__(cls)  # fields as stored, without re-running the constructor's checks
    for field, stored in value["fields"].items():
        object.__setattr__(record, field, _decode(stored, arrays))
    return record


def _decode_objects(body, value, arrays):
    items = [_decode(v, arrays) for v in body]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(value["shape"]).astype(value["dtype"])


def _decode_series(body, value, arrays):
    values = _decode(body["values"], arrays)
    return pd.Series(values, index=_decode(body["index"], arrays), name=_decode(body["name"], arrays),
                     dtype=body["dtype"])


def _decode_categorical_series(body, value, arrays):
    values = pd.Categorical.from_codes(_decode(body["codes"], arrays), categories=_decode(body["categories"], arrays),
                                       ordered=body["ordered"])
    return pd.Series(values, index=_decode(body["index"], arrays), name=_decode(body["name"], arrays))


def _decode_frame(body, value, arrays):
    columns = [_decode(column, arrays) for column in body["data"]]
    frame = pd.concat(columns, axis=1) if columns else pd.DataFrame(index=_decode(body["index"], arrays))
    frame.columns = _decode(body["columns"], arrays)
    return frame


def _decode_model_spec(body, value, arrays):
    encoder = {name: (Factor.Kind(kind), _decode(state, arrays))
               for name, (kind, state) in body["encoder_state"].items()}
    return ModelSpec(formula=Formula(body["formula"]), materializer="pandas", ensure_full_rank=body["ensure_full_rank"],
                     na_action=NAAction(body["na_action"]), output=body["output"],
                     cluster_by=ClusterBy(body["cluster_by"]),
                     transform_state={name: _decode(state, arrays) for name, state in body["transform_state"].items()},
                     encoder_state=encoder)


_DECODERS = {
    "__float__": lambda body, value, arrays: float(body),
    "__tuple__": lambda body, value, arrays: tuple(_decode(v, arrays) for v in body),
    "__dict__": lambda body, value, arrays: {_freeze(_decode(k, arrays)): _decode(v, arrays) for k, v in body},
    "__ndarray__": lambda body, value, arrays: arrays[body],
    "__objects__": _decode_objects,
    "__record__": _decode_record,
    "__series__": _decode_series,
    "__catseries__": _decode_categorical_series,
    "__frame__": _decode_frame,
    "__index__": lambda body, value, arrays: pd.Index(_decode(body["values"], arrays), dtype=body["dtype"],
                                                      name=_decode(body["name"], arrays)),
    "__range__": lambda body, value, arrays: pd.RangeIndex(*body, name=_decode(value["name"], arrays)),
    "__multiindex__": lambda body, value, arrays: pd.MultiIndex(
        levels=[_decode(level, arrays) for level in body["levels"]],
        codes=[_decode(c, arrays) for c in body["codes"]], names=_decode(body["names"], arrays)),
    "__categorical__": lambda body, value, arrays: pd.CategoricalIndex.from_codes(
        _decode(body["codes"], arrays), categories=_decode(body["categories"], arrays), ordered=body["ordered"],
        name=_decode(body["name"], arrays)),
    "__modelspec__": _decode_model_spec,
}


def _freeze(key):
    """A decoded dict key: lists back to tuples (JSON has no tuples as keys)."""
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key
