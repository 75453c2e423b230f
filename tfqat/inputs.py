"""Model input data as calibrate, layer_report, compare_tflite and op_fidelity take it.

The conventions are model.fit's `x`:
- a numpy array (or tensor), for a model with one input;
- a list or tuple of arrays, one per model input in `model.inputs` order, or a
  dict {input name: array}, for a model with several inputs;
- a tf.data.Dataset or any iterable of batches, each batch one of the above or
  an (x, y) / (x, y, sample_weight) tuple whose labels are ignored.
Arrays are split into batches of `batch_size` rows.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf


def _input_names(model) -> list:
    return [tensor.name for tensor in model.inputs]


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor))


def _as_input_structure(element, model):
    """The model inputs in one data element: drops labels of (x, y[, w]) elements."""
    num_inputs = len(model.inputs)
    if isinstance(element, dict):
        return element
    if isinstance(element, (tuple, list)):
        if num_inputs == 1:
            return element[0]
        if len(element) == num_inputs and all(_is_array(e) for e in element):
            return list(element)  # one array per input (labels come as ((xa, xb), y))
        return element[0]
    return element


def _array_inputs(model, data):
    """`data` as a list of whole input arrays (one per model input), or None if it is not."""
    names = _input_names(model)
    if _is_array(data):
        return [np.asarray(data)] if len(names) == 1 else None
    if isinstance(data, dict) and all(_is_array(v) for v in data.values()):
        unknown = sorted(set(data) - set(names))
        missing = [name for name in names if name not in data]
        if unknown or missing:
            raise ValueError(
                f"data is a dict with keys {sorted(data)}, but model '{model.name}' has inputs "
                f"{names}; key the arrays by input name.")
        return [np.asarray(data[name]) for name in names]
    if (len(names) > 1 and isinstance(data, (list, tuple)) and len(data) == len(names)
            and all(_is_array(v) for v in data)):
        return [np.asarray(v) for v in data]
    return None


def check_inputs(model, batch, label, what):
    """`batch` (one array, or a list/dict of arrays) checked against `model`'s inputs;
    float arrays come back as float32. `label` and `what` name it in errors. A dict
    comes back as a list in `model.inputs` order.

    Example:
      >>> x = check_inputs(qat_model, x, "data", "compare_tflite")  # ValueError if misshaped
    """
    specs = model.inputs
    if isinstance(batch, dict):
        names = _input_names(model)
        if sorted(batch) != sorted(names):
            raise ValueError(f"{what}: {label} has keys {sorted(batch)}, but model "
                             f"'{model.name}' has inputs {names}; key the arrays by input name.")
        arrays = [batch[name] for name in names]
    else:
        arrays = list(batch) if isinstance(batch, (tuple, list)) else [batch]
    if len(arrays) != len(specs):
        raise ValueError(f"{what}: {label} holds {len(arrays)} input arrays, but model "
                         f"'{model.name}' has {len(specs)} inputs "
                         f"({', '.join(t.name for t in specs)}).")
    checked = []
    for array, spec in zip(arrays, specs):
        array = np.asarray(array)
        expected = tuple(spec.shape[1:])
        shape_ok = array.ndim == len(expected) + 1 and all(
            e is None or e == a for e, a in zip(expected, array.shape[1:]))
        if not shape_ok:
            shown = ", ".join("?" if e is None else str(e) for e in expected)
            raise ValueError(
                f"{what}: {label} has shape {array.shape}, but model '{model.name}' input "
                f"'{spec.name}' takes (batch, {shown}). Pass inputs shaped like the model's "
                "input, with the batch axis first.")
        if array.dtype.kind == "f":
            array = array.astype(np.float32, copy=False)
            if not np.isfinite(array).all():
                raise ValueError(f"{what}: {label} holds NaN or infinite values; "
                                 "calibration and error statistics need finite inputs.")
        checked.append(array)
    if len({len(a) for a in checked}) > 1:
        raise ValueError(f"{what}: {label} has input arrays of different lengths "
                         f"({', '.join(str(len(a)) for a in checked)}); give every input the "
                         "same number of examples.")
    return checked[0] if len(checked) == 1 else checked


def input_batches(model, data, batch_size=32, num_batches=None, what="calibrate"):
    """Yields the input batches of `data` (see the module doc), checked against `model`.

    A batch is one array for a one-input model, else a list in `model.inputs`
    order. At most `num_batches` batches.

    Example:
      >>> [b.shape for b in input_batches(model, np.zeros((70, 8, 8, 1)), 32)]
      [(32, 8, 8, 1), (32, 8, 8, 1), (6, 8, 8, 1)]
      >>> len(next(input_batches(two_input_model, {"a": xa, "b": xb})))
      2
    """
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"{what}: batch_size={batch_size!r} must be a positive integer.")
    if num_batches is not None and (not isinstance(num_batches, numbers.Integral)
                                    or num_batches < 1):
        raise ValueError(f"{what}: num_batches={num_batches!r} must be None (all data) or a "
                         "positive integer.")
    arrays = _array_inputs(model, data)
    if arrays is not None:
        arrays = check_inputs(model, arrays if len(arrays) > 1 else arrays[0], "data", what)
        arrays = arrays if isinstance(arrays, list) else [arrays]
        if arrays[0].ndim == 0 or len(arrays[0]) == 0:
            raise ValueError(f"{what}: data has shape {arrays[0].shape}; pass at least one "
                             "example, with the batch axis first.")
        elements = ([a[start:start + batch_size] for a in arrays]
                    for start in range(0, len(arrays[0]), batch_size))
        elements = (e[0] if len(e) == 1 else e for e in elements)
    elif _is_array(data):
        raise ValueError(f"{what}: model '{model.name}' has {len(model.inputs)} inputs; pass a "
                         "list with one array per input, a dict keyed by input name, or an "
                         "iterable of such batches.")
    elif isinstance(data, tf.data.Dataset):
        elements = data.as_numpy_iterator()
    elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes, dict)):
        elements = iter(data)
    else:
        raise TypeError(f"{what}: data of type {type(data).__name__} is not supported; pass a "
                        "numpy array of inputs (a list or dict of them for several inputs), or "
                        "an iterable / tf.data.Dataset of input batches or (x, y) batches.")
    for index, element in enumerate(elements):
        if num_batches is not None and index >= num_batches:
            return
        yield check_inputs(model, _as_input_structure(element, model), f"batch {index}", what)
