"""tfqat-export, run as a real subprocess: `python -m tfqat.cli.export`."""

import os
import subprocess
import sys

import keras
import pytest

import tfqat
from tiny_models import calibrate_quantizers, mixed_model, random_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tfqat.cli.export", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    model = mixed_model(input_shape=(28, 28, 1), num_classes=10)
    model.save(folder / "float.keras")
    qat = tfqat.quantize_model(model)
    calibrate_quantizers(qat, random_images(16, (28, 28, 1)))
    qat.save(folder / "qat.keras")
    excluded = tfqat.quantize_model(model, tfqat.QuantConfig(exclude=("conv2",)))
    calibrate_quantizers(excluded, random_images(16, (28, 28, 1)))
    excluded.save(folder / "excluded.keras")
    (folder / "corrupt.keras").write_bytes(b"not a zip file")
    content = (folder / "qat.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(content[:len(content) // 2])
    return folder


def test_export_writes_an_integer_only_model_and_reports(saved_models, tmp_path):
    out = tmp_path / "m.tflite"
    result = export_cli(f"--model={saved_models / 'qat.keras'}", f"--output={out}", "--report",
                        "--eval_dataset=digits")
    assert result.returncode == 0, result.stderr
    assert tfqat.inspect_tflite(str(out)).integer_only
    assert "integer-only: yes" in result.stdout
    assert "int8 accuracy" in result.stdout and "agreement" in result.stdout


def _assert_one_line_error(result, *fragments, output=None):
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfqat-export: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    assert "Traceback" not in result.stderr
    if output is not None:
        assert not os.path.exists(output)


def test_missing_model_file(tmp_path):
    out = tmp_path / "m.tflite"
    _assert_one_line_error(export_cli("--model=nope.keras", f"--output={out}"), "no such file",
                           output=out)


@pytest.mark.parametrize("name", ["corrupt.keras", "truncated.keras"])
def test_corrupt_or_truncated_model_file_is_unreadable(saved_models, tmp_path, name):
    out = tmp_path / "m.tflite"
    result = export_cli(f"--model={saved_models / name}", f"--output={out}")
    _assert_one_line_error(result, "unreadable", name, output=out)
    assert "not found" not in result.stderr.lower()


def test_float_model_says_what_to_run(saved_models, tmp_path):
    out = tmp_path / "m.tflite"
    _assert_one_line_error(export_cli(f"--model={saved_models / 'float.keras'}", f"--output={out}"),
                           "quantize_model", "tfqat-train", output=out)


def test_not_integer_only_names_the_layers(saved_models, tmp_path):
    out = tmp_path / "m.tflite"
    _assert_one_line_error(export_cli(f"--model={saved_models / 'excluded.keras'}", f"--output={out}"),
                           "conv2", output=out)


def test_unwritable_output(saved_models, tmp_path):
    out = tmp_path / "missing_folder" / "m.tflite"
    _assert_one_line_error(export_cli(f"--model={saved_models / 'qat.keras'}", f"--output={out}"),
                           "--output", output=out)


def test_unknown_dataset_leaves_no_tflite(saved_models, tmp_path):
    out = tmp_path / "m.tflite"
    result = export_cli(f"--model={saved_models / 'qat.keras'}", f"--output={out}",
                        "--eval_dataset=nonsense")
    _assert_one_line_error(result, "--eval_dataset", "nonsense", output=out)


def test_unknown_flag_is_one_line_and_exit_2():
    _assert_one_line_error(export_cli("--modle=x"), "modle")


def test_quiet_by_default_and_verbose_brings_logs_back(saved_models, tmp_path):
    quiet = export_cli(f"--model={saved_models / 'qat.keras'}", f"--output={tmp_path / 'a.tflite'}")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "", quiet.stderr[-2000:]
    assert quiet.stdout.strip().splitlines()[-1].startswith("Wrote ")
    loud = export_cli(f"--model={saved_models / 'qat.keras'}", f"--output={tmp_path / 'b.tflite'}",
                      "--verbose")
    assert loud.returncode == 0 and "Statistics for quantized inputs" in loud.stderr


def test_help_lists_every_flag_in_groups():
    result = subprocess.run(
        [sys.executable, "-c", "import tfqat.cli.export as app; from absl import flags; "
         "own = {f.name for m, fs in flags.FLAGS.flags_by_module_dict().items() "
         "if 'tfqat' in m for f in fs}; grouped = [n for _, ns in app.GROUPS for n in ns]; "
         "print(sorted(own ^ set(grouped)), len(grouped) - len(set(grouped)))"],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["[]", "0"], result.stdout + result.stderr[-2000:]
    help_text = export_cli("--help")
    assert help_text.returncode == 0 and "Input and output:" in help_text.stdout
