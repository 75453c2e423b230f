"""BatchNorm re-estimation: moving statistics recomputed exactly from data, weights fixed.

Keras's moving statistics are an EMA: with momentum 0.999 (keras.applications)
the initial mean 0 / variance 1 still weighs 0.999 ** 360 = 70% after the 360
steps of a short run, and the model scores near chance at inference although
it trains well. `reestimate_batchnorm` replaces the EMA by the exact average
over the given batches of what each training step would have fed it:

    moving_mean     = sum_b n_b * mean_b / sum_b n_b
    moving_variance = sum_b n_b * var_b  / sum_b n_b

mean_b and var_b are the batch moments a training step computes (biased
variance over every axis but the channel axis), n_b the number of values
reduced. The variance is the average batch variance, not the variance pooled
over all batches: that is the quantity Keras's EMA estimates and the one the
inference form divides by, so the result is what the EMA converges to with the
weights fixed. Every BN sees the batch-normalized outputs of the BNs before it
(the training-mode forward pass), as in training.

What runs: one training-mode forward pass per batch with the trainable weights
untouched; every other variable the pass changes (moving statistics, activation
ranges, step counters, random seeds) is restored afterwards, and dropout/noise
layers are switched off for the pass (their noise is absent at inference, so it
should not enter the statistics).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfqat.calibration.calibrators import input_batches
from tfqat.nn.layers import FusedQuantLayer
from tfqat.rewrite import graph

# Layers whose training-mode noise is switched off while statistics are gathered.
_NOISE_ATTRIBUTES = (
    (keras.layers.Dropout, "rate"),
    (keras.layers.SpatialDropout1D, "rate"),
    (keras.layers.SpatialDropout2D, "rate"),
    (keras.layers.SpatialDropout3D, "rate"),
    (keras.layers.GaussianDropout, "rate"),
    (keras.layers.AlphaDropout, "rate"),
    (keras.layers.GaussianNoise, "stddev"),
)


def batchnorm_layers(model) -> list:
    """Every BatchNormalization of `model` whose statistics `reestimate_batchnorm` recomputes:
    keras BatchNormalization layers and tfqat's folded BNs (FusedQuantLayer with a BN,
    QuantBatchNormalization), trainable ones only (a frozen layer uses its moving statistics
    in training too, so it has no batch statistics to average).

    Example:
      >>> [layer.name for layer in batchnorm_layers(tfqat.training.models.lenet5())]
      ['bn1', 'bn2', 'bn3']
    """
    found = []
    for layer in graph.all_layers(model):
        is_bn = isinstance(layer, keras.layers.BatchNormalization) or (
            isinstance(layer, FusedQuantLayer) and layer.batchnorm is not None)
        if is_bn and layer.trainable:
            found.append(layer)
    return found


def max_momentum(model) -> float | None:
    """The largest momentum of `model`'s BatchNorms (None without any)."""
    momenta = [_momentum(layer) for layer in batchnorm_layers(model)]
    return max(momenta) if momenta else None


def unsettled_weight(momentum: float, steps: int) -> float:
    """Weight the initial statistics still have in a BN's EMA after `steps` updates.

    Example:
      >>> round(unsettled_weight(0.999, 360), 2)
      0.7
    """
    return float(momentum) ** max(int(steps), 0)


def _momentum(layer) -> float:
    if isinstance(layer, FusedQuantLayer):
        return layer.batchnorm["momentum"]
    return float(layer.momentum)


def _reduction_axes(layer, rank):
    if isinstance(layer, FusedQuantLayer):
        return list(range(rank - 1))
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    axes = {a % rank for a in axes}
    return [a for a in range(rank) if a not in axes]


def _pre_normalization(layer, x):
    """The tensor the layer normalizes: a keras BN's input; a folded BN's conv output + bias
    (the float-kernel op the fused layer takes its batch statistics from)."""
    if not isinstance(layer, FusedQuantLayer):
        return x
    y = layer._linear(layer._to_op_layout(x), layer._raw_kernel_view())
    if layer.bias is not None:
        y = y + layer.bias
    return y


@contextlib.contextmanager
def _noise_off(model):
    changed = []
    for layer in graph.all_layers(model):
        for kind, attribute in _NOISE_ATTRIBUTES:
            if isinstance(layer, kind) and getattr(layer, attribute, 0):
                changed.append((layer, attribute, getattr(layer, attribute)))
                setattr(layer, attribute, 0.0)
                break
    try:
        yield
    finally:
        for layer, attribute, value in changed:
            setattr(layer, attribute, value)


def _check_not_frozen(layers, what):
    frozen = [layer.name for layer in layers
              if isinstance(layer, FusedQuantLayer) and layer.bn_frozen()]
    if frozen:
        raise ValueError(
            f"{what}: folded BatchNorms {', '.join(frozen)} are past bn_freeze_delay and train "
            "on their moving statistics; re-estimate before the freeze (on the float model, or "
            "on the QAT model before its step counter reaches bn_freeze_delay).")


def reestimate_batchnorm(model, data, steps: int | None = None, batch_size: int = 32) -> dict:
    """Recomputes every BatchNorm's moving mean and variance from `data`, weights fixed.

    Works on float Keras models (keras BatchNormalization) and on QAT models
    from `tfqat.quantize_model` before the BN freeze (folded BNs, standalone
    QuantBatchNormalization). The statistics are exact averages over the
    batches (see the module docstring: count-weighted mean of batch means and
    of batch variances), not an EMA; batch size matters a little to the
    variance, so use the training batch size. Nothing else in the model
    changes.

    Args:
      model: a Functional (or built Sequential) Keras model.
      data: a numpy array of inputs, or an iterable / tf.data.Dataset of input
        batches or (x, y) batches.
      steps: use at most this many batches (None: all of `data`).
      batch_size: rows per batch when `data` is an array.

    Returns:
      {layer name: (moving_mean, moving_variance)} as stored (numpy arrays).

    Example:
      >>> model.fit(x_train, y_train, epochs=3)     # BN momentum 0.999: stats lag behind
      >>> stats = tfqat.reestimate_batchnorm(model, x_train, steps=100)
      >>> model.evaluate(x_test, y_test)            # inference form now matches training
    """
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"reestimate_batchnorm: steps={steps!r} must be None (all data) or a "
                         "positive integer.")
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"reestimate_batchnorm: model '{model.name}' has no trainable "
                         "BatchNormalization (nor folded BN) to re-estimate.")
    _check_not_frozen(layers, "reestimate_batchnorm")
    try:
        probe = keras.Model(model.inputs, [layer.input for layer in layers],
                            name=f"{model.name}_bn_probe")
    except (AttributeError, ValueError) as err:
        raise ValueError(
            f"reestimate_batchnorm: cannot reach the inputs of {layers[0].name} ... from the "
            f"inputs of model '{model.name}' ({err}). Pass a Functional model whose BatchNorms "
            "are not inside nested models.") from err
    @tf.function(reduce_retracing=True)
    def batch_moments(batch):
        inputs = keras.tree.flatten(probe(batch, training=True))
        results = []
        for layer, x in zip(layers, inputs):
            y = tf.cast(_pre_normalization(layer, x), tf.float32)
            reduce = _reduction_axes(layer, len(y.shape))
            mean, variance = tf.nn.moments(y, axes=reduce)
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(y), reduce)), tf.float64)
            results.append((tf.cast(mean, tf.float64), tf.cast(variance, tf.float64), count))
        return results

    saved = [(v, v.numpy()) for v in model.non_trainable_variables]
    sums = [[0.0, 0.0, 0.0] for _ in layers]
    seen = 0
    try:
        with _noise_off(model):
            for batch in input_batches(model, data, batch_size, steps, what="reestimate_batchnorm"):
                for total, (mean, variance, count) in zip(sums, batch_moments(batch)):
                    count = float(count)
                    total[0] = total[0] + mean.numpy() * count
                    total[1] = total[1] + variance.numpy() * count
                    total[2] += count
                seen += 1
    finally:
        for variable, value in saved:
            variable.assign(value)
    if seen == 0:
        raise ValueError("reestimate_batchnorm: data gave no batches; pass at least one batch.")
    stats = {}
    for layer, (mean_sum, variance_sum, count) in zip(layers, sums):
        mean = (mean_sum / count).astype(np.float32)
        variance = (variance_sum / count).astype(np.float32)
        if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
            raise ValueError(f"reestimate_batchnorm: BatchNorm '{layer.name}' got NaN or "
                             "infinite statistics; check the model's weights and the data.")
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
        stats[layer.name] = (mean, variance)
    return stats
