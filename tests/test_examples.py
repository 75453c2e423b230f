"""Each example runs, in a reduced form, and does what it says."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mnist_qat(tmp_path):
    result = load_example("mnist_qat").main(
        ["--dataset", "digits", "--epochs", "10", "--qat_epochs", "1", "--output_dir", str(tmp_path)])
    assert result.tflite_accuracy > 0.9 and result.agreement >= 0.98
    assert (tmp_path / "lenet5_int8.tflite").is_file()


def test_mobilenet_v2_export(tmp_path):
    output = tmp_path / "m.tflite"
    report, comparison = load_example("mobilenet_v2_export").main(
        ["--input_size", "32", "--calibration_batches", "1", "--output", str(output)])
    assert report.integer_only and output.is_file()
    assert report.op_histogram["DEPTHWISE_CONV_2D"] == 17
    assert comparison.agreement >= 0.9


@pytest.mark.slow
def test_custom_model(capsys):
    results, report = load_example("custom_model").main(float_epochs=10, qat_epochs=1)
    assert report.integer_only
    assert results["int8 tflite"] > 0.9 and results["qat, 4-bit body"] > 0.85
    out = capsys.readouterr().out
    assert "'first_conv': 8" in out and "'pw1': 4" in out and "'classifier': 8" in out
    assert "export refused, as expected" in out and "classifier" in out


@pytest.mark.slow
def test_custom_layer(capsys):
    assert load_example("custom_layer").main(["--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "int8_layer:ChannelScale" in out and "spec:ScaledDense" in out and "conv_bn_block" in out
