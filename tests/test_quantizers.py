import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras

from tfqat.nn.activations import QuantActivation
from tfqat.nn.quantizers import (FIXED_RANGES, ActivationQuantizer, bypass_quantizers,
                              fake_quant_weights)


def reference_fake_quant(x, range_min, range_max, bits, narrow_range=False):
    """Numpy FakeQuant with TF's nudging: zero is exactly representable."""
    x = np.asarray(x, np.float32)
    quant_min = 1.0 if narrow_range else 0.0
    quant_max = 2.0 ** bits - 1
    scale = np.float32((range_max - range_min) / (quant_max - quant_min))
    zero_point_from_min = quant_min - range_min / scale
    nudged_zero_point = np.clip(np.round(zero_point_from_min), quant_min, quant_max)
    nudged_min = np.float32((quant_min - nudged_zero_point) * scale)
    nudged_max = np.float32((quant_max - nudged_zero_point) * scale)
    clamped = np.clip(x, nudged_min, nudged_max)
    steps = (clamped - nudged_min) / scale
    return np.floor(steps + 0.5) * scale + nudged_min, steps, scale


def assert_matches_reference(actual, expected, steps, scale):
    # Inputs within float rounding of a half step may round either way.
    near_tie = np.abs(steps - np.floor(steps) - 0.5) < 1e-3
    close = np.isclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, float(np.max(np.abs(expected)))))
    assert np.all(close | near_tie)


finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=finite),
       lo=st.floats(-50, 0, width=32), width=st.floats(0.125, 80, width=32),
       bits=st.integers(2, 8))
def test_activation_fake_quant_matches_numpy_nudging(x, lo, width, bits):
    hi = lo + width
    actual = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=bits).numpy()
    expected, steps, scale = reference_fake_quant(x, lo, hi, bits)
    assert_matches_reference(actual, expected, steps, scale)
    # Zero survives quantization exactly: the reason for nudging.
    assert tf.quantization.fake_quant_with_min_max_vars(
        np.zeros(1, np.float32), lo, hi, num_bits=bits).numpy()[0] == 0.0


@settings(max_examples=40, deadline=None)
@given(w=hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=finite),
       bits=st.integers(2, 8))
def test_per_channel_weight_fake_quant_is_symmetric_narrow_range(w, bits):
    actual = fake_quant_weights(w, bits=bits, per_channel=True).numpy()
    levels = 2 ** (bits - 1) - 1
    for c in range(w.shape[-1]):
        bound = max(float(np.max(np.abs(w[:, c]))), 1e-8)
        expected, steps, scale = reference_fake_quant(w[:, c], -bound, bound, bits, narrow_range=True)
        assert_matches_reference(actual[:, c], expected, steps, scale)
        # Integer grid [-levels, levels] with zero point 0.
        q = actual[:, c] / (bound / levels)
        assert np.allclose(q, np.round(q), atol=1e-3)
        assert np.all(np.abs(np.round(q)) <= levels)


def test_per_channel_uses_one_range_per_output_channel():
    w = np.array([[0.1, 10.0], [-0.05, -5.0]], np.float32)
    per_channel = fake_quant_weights(w, 8, per_channel=True).numpy()
    per_tensor = fake_quant_weights(w, 8, per_channel=False).numpy()
    half_step = np.max(np.abs(w), axis=0) / 127 / 2
    assert np.all(np.abs(per_channel - w) <= half_step * 1.001)
    # Per tensor, the small channel lives on the coarse 10/127 grid.
    on_grid = per_tensor[:, 0] / (10 / 127)
    assert np.allclose(on_grid, np.round(on_grid), atol=1e-4) and per_tensor[1, 0] != w[1, 0]


def test_all_zero_channel_stays_zero():
    w = np.zeros((3, 2), np.float32)
    assert np.all(fake_quant_weights(w).numpy() == 0.0)


def test_range_initializes_from_first_batch_then_tracks_ema():
    q = ActivationQuantizer(bits=8, ema_decay=0.9)
    first = np.array([[-1.0, 2.0]], np.float32)
    q(first, training=True)
    assert q.current_range() == pytest.approx((-1.0, 2.0))
    second = np.array([[-3.0, 4.0]], np.float32)
    q(second, training=True)
    assert q.current_range() == pytest.approx((0.9 * -1 + 0.1 * -3, 0.9 * 2 + 0.1 * 4))


def test_range_always_contains_zero():
    q = ActivationQuantizer()
    q(np.array([[2.0, 3.0]], np.float32), training=True)
    assert q.current_range() == pytest.approx((0.0, 3.0))


def test_inference_uses_stored_range_and_does_not_update():
    q = ActivationQuantizer()
    q(np.array([[0.0, 1.0]], np.float32), training=True)
    out = q(np.array([[5.0, 0.5]], np.float32), training=False).numpy()
    assert q.current_range() == pytest.approx((0.0, 1.0))
    assert out[0, 0] == pytest.approx(1.0)  # clipped to the stored range
    assert int(q.step.numpy()) == 1


def test_quant_delay_passes_values_through_while_tracking():
    q = ActivationQuantizer(quant_delay=2)
    x = np.array([[0.0, 0.3333, 1.0]], np.float32)
    for _ in range(2):
        assert np.array_equal(q(x, training=True).numpy(), x)
    assert q.current_range() == pytest.approx((0.0, 1.0))
    quantized = q(x, training=True).numpy()
    assert not np.array_equal(quantized, x)
    assert quantized[0, 1] == pytest.approx(round(0.3333 * 255) / 255, abs=1e-6)


@pytest.mark.parametrize("kind,scale,zero_point", [
    ("softmax", 1 / 256, -128), ("sigmoid", 1 / 256, -128), ("tanh", 1 / 128, 0)])
def test_fixed_ranges_give_tflite_scales(kind, scale, zero_point):
    lo, hi = FIXED_RANGES[kind]
    assert (hi - lo) / 255 == pytest.approx(scale)
    assert round(-lo / scale) - 128 == zero_point
    q = ActivationQuantizer(fixed_range=(lo, hi))
    x = np.linspace(lo, hi, 50, dtype=np.float32)[None]
    out = q(x, training=True).numpy()
    assert np.allclose(out / scale, np.round(out / scale), atol=1e-4)
    assert not hasattr(q, "range_min")


def test_calibration_flag():
    q = ActivationQuantizer()
    q.build((None, 2))
    assert not q.is_calibrated
    q(np.ones((1, 2), np.float32), training=True)
    assert q.is_calibrated


def test_bypass_leaves_step_counters_alone():
    inp = keras.Input((4,))
    model = keras.Model(inp, QuantActivation("silu", quant_delay=2)(ActivationQuantizer()(inp)))
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4)
    model(x, training=True)
    counters = [layer for layer in model.layers if hasattr(layer, "step")]
    assert [int(layer.step.numpy()) for layer in counters] == [1, 1]
    with bypass_quantizers(model):
        np.testing.assert_allclose(model(x, training=True).numpy(), x * (1 / (1 + np.exp(-x))),
                                   rtol=1e-5)
    assert [int(layer.step.numpy()) for layer in counters] == [1, 1]
    model(x, training=True)
    assert [int(layer.step.numpy()) for layer in counters] == [2, 2]


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_silu_inner_sigmoid_is_int8_whatever_the_bits(bits):
    # TFLite's LOGISTIC output is int8, scale 1/256, zero point -128.
    x = np.linspace(-6, 6, 301, dtype=np.float32)[None]
    out = QuantActivation("silu", bits=bits)(x, training=False).numpy()
    sigmoid = np.round(256 / (1 + np.exp(-x.astype(np.float64)))).clip(0, 255) / 256
    np.testing.assert_allclose(out, x * sigmoid, atol=1e-6)


def test_other_inner_fake_quants_follow_the_bits():
    x = np.linspace(-4, 4, 101, dtype=np.float32)[None]
    exact = np.clip(x + 3, 0, 6) / 6
    coarse = QuantActivation("hard_sigmoid", bits=8)(x, training=False).numpy()
    fine = QuantActivation("hard_sigmoid", bits=16)(x, training=False).numpy()
    assert np.abs(fine - exact).max() < np.abs(coarse - exact).max() / 100
