import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

import tfqat
from tfqat.calibration.calibrators import calibrate
from tfqat.cli.inspect import main
from tiny_models import random_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_float_model():
    inp = keras.Input((6, 6, 1), name="image")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(3, activation="softmax", name="logits")(x)
    return keras.Model(inp, out, name="small")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(0)
    model = small_float_model()
    qat = tfqat.quantize_model(model)
    calibrate(qat, random_images(16, shape=(6, 6, 1)))
    paths = {"int8": folder / "int8.tflite", "float": folder / "float.tflite"}
    tfqat.export_tflite(qat, str(paths["int8"]))
    paths["float"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    content = paths["int8"].read_bytes()
    paths["truncated"] = folder / "truncated.tflite"
    paths["truncated"].write_bytes(content[:len(content) // 2])
    paths["text"] = folder / "notes.tflite"
    paths["text"].write_text("this is not a model\n")
    paths["missing"] = folder / "missing.tflite"
    return paths


def test_prints_ops_tensors_quantization_and_summary(files, capsys):
    assert main([str(files["int8"])]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("integer-only: yes")
    assert "CONV_2D" in out and "SOFTMAX" in out  # tfqat runs Dense as a 1x1 conv
    assert "int8" in out and "int32" in out  # activations and biases
    assert "zp=-128" in out and "s=0.00390625" in out  # the softmax output: scale 1/256
    report = tfqat.inspect_tflite(str(files["int8"]))
    assert out.strip().startswith(str(report).splitlines()[0])
    assert sum(1 for line in lines if line.split()[:1] and line.split()[0].isdigit()) == \
        sum(len(op.inputs) + len(op.outputs) for op in report.ops)  # a row per tensor


def test_float_model_is_reported_not_integer_only(files, capsys):
    assert main([str(files["float"])]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("integer-only: NO") and "float32" in last
    assert main(["--check", str(files["float"])]) == 1
    assert main(["--check", str(files["int8"])]) == 0


@pytest.mark.parametrize("kind,message", [
    ("missing", "does not exist"),
    ("text", "is not a TFLite model"),
    ("truncated", "truncated or corrupt"),
])
def test_unusable_files_get_one_line_and_status_2(files, capsys, kind, message):
    assert main([str(files[kind])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"tfqat-inspect: error: '{files[kind]}'")
    assert message in captured.err


def test_directory_and_usage_errors(files, capsys):
    assert main([str(files["int8"].parent)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def _run_module(path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "tfqat.cli.inspect", str(path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_runs_as_a_module(files):
    result = _run_module(files["int8"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("integer-only: yes")


def test_module_error_has_no_traceback(files):
    result = _run_module(files["truncated"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tfqat-inspect: error:")
