"""tfqat-train as a real subprocess: the whole job, bad flags, and kill + --resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfqat  # registers the layers for load_model
import tfqat.training.models  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_RUN = ["--model=lenet5", "--dataset=digits", "--float_epochs=10", "--qat_epochs=2",
             "--batch_size=32", "--bn_freeze_delay=60", "--seed=3"]


def train_cli(*args, **popen):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "tfqat.cli.train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def load_metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as handle:
        return json.load(handle)


@pytest.mark.slow
def test_full_run_writes_every_output(tmp_path):
    code, out, err = finish(train_cli(*SMALL_RUN, f"--output_dir={tmp_path}"))
    assert code == 0, err[-3000:]
    for name in ("float.keras", "qat.keras", "model_int8.tflite", "model_float.tflite",
                 "metrics.json"):
        assert (tmp_path / name).is_file(), name
    # Quiet: no TF/Keras/converter lines, no progress-bar codes, labelled epochs, every output.
    assert err.strip() == "", err[-3000:]
    assert "TensorSpec" not in out and "\x1b[" not in out
    assert "float epoch 10/10" in out and "QAT epoch 1/2" in out and "Epoch 2/2" not in out
    closing = out.strip().splitlines()[-1]
    for name in ("float.keras", "qat.keras", "model_int8.tflite", "model_float.tflite",
                 "metrics.json", "logs/", "ckpt/"):
        assert name in closing, name
    metrics = load_metrics(tmp_path)
    assert metrics["int8_accuracy"] > 0.8 and metrics["tflite_qat_agreement"] >= 0.97
    # The same .tflite on LiteRT's default runtime (XNNPACK), reported beside it.
    assert metrics["xnnpack"]["tflite_qat_agreement"] >= 0.97
    assert abs(metrics["xnnpack"]["int8_accuracy"] - metrics["int8_accuracy"]) <= 0.03
    assert "XNNPACK vs QAT top-1 agreement" in out
    # int8 weights take a quarter of the bytes; a model this small adds fixed flatbuffer overhead.
    assert metrics["int8_tflite_bytes"] < 0.5 * metrics["float_tflite_bytes"]
    assert set(metrics["wall_time_s"]) >= {"float_training_s", "qat_training_s", "export_s"}
    assert "int8 TFLite accuracy" in out and "agreement" in out
    assert any(name.startswith("events") for _, _, files in os.walk(tmp_path / "logs")
               for name in files)
    assert tfqat.inspect_tflite(str(tmp_path / "model_int8.tflite")).integer_only


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, err = finish(train_cli(*SMALL_RUN, f"--output_dir={straight}"))
    assert code == 0, err[-3000:]

    process = train_cli(*SMALL_RUN, f"--output_dir={resumed}", start_new_session=True)
    state_path = resumed / "ckpt" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state_path.exists() and json.loads(state_path.read_text()).get("epochs_done", 0) >= 1:
            break
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (resumed / "metrics.json").exists()  # it really was cut short

    code, _, err = finish(train_cli(*SMALL_RUN, f"--output_dir={resumed}", "--resume"))
    assert code == 0, err[-3000:]
    a, b = load_metrics(straight), load_metrics(resumed)
    for key in ("float_accuracy", "qat_accuracy", "int8_accuracy", "tflite_qat_agreement",
                "max_output_diff_lsb"):
        assert a[key] == b[key], key
    model_a = keras.models.load_model(straight / "qat.keras")
    model_b = keras.models.load_model(resumed / "qat.keras")
    for va, vb in zip(model_a.weights, model_b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)
    assert (straight / "model_int8.tflite").read_bytes() == (resumed / "model_int8.tflite").read_bytes()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model = tfqat.training.models.lenet5(input_shape=(8, 8, 1))
    tfqat.quantize_model(model).save(folder / "qat.keras")
    (folder / "corrupt.keras").write_bytes(b"PK\x03\x04 cut short")
    return folder


def _assert_refused(tmp_path, *args, fragments=()):
    """Exit 2, one error line naming `fragments`, no traceback, and nothing written."""
    out_dir = tmp_path / "run"
    code, out, err = finish(train_cli(*args, f"--output_dir={out_dir}"))
    assert code == 2, err[-3000:]
    (line,) = [l for l in err.splitlines() if l.startswith("tfqat-train: error:")]
    assert all(fragment in line for fragment in fragments), line
    assert "Traceback" not in err
    assert not out_dir.exists()
    return out


@pytest.mark.parametrize("flag,fragment", [
    ("--weight_bits=1", "weight_bits"),
    ("--weight_bits=12", "--weight_bits=12"),  # QuantConfig allows 12; the job exports int8
    ("--activation_bits=7", "--activation_bits=8"),  # export_tflite would refuse it after training
    ("--dataset=imagenet", "imagenet"),
    ("--model=nope", "nope"),
    ("--bn_freeze_delay=-3", "bn_freeze_delay"),
    ("--batch_size=0", "--batch_size=0"),
    ("--modle=lenet5", "modle"),  # a flag-parse error: exit 2 like every other bad input
])
def test_bad_flag_values_give_one_line_errors(tmp_path, flag, fragment):
    _assert_refused(tmp_path, flag, fragments=(fragment,))


def test_unknown_exclude_is_refused_before_training_and_resume_says_so(tmp_path):
    # --float_epochs=8 (the default) would take a minute: the check comes first.
    out = _assert_refused(tmp_path, "--dataset=digits", "--exclude=conv9", "--resume",
                          fragments=("--exclude", "conv9"))
    assert "--resume: no checkpoint" in out


def test_qat_model_as_float_model_is_refused(tmp_path, model_files):
    _assert_refused(tmp_path, f"--model={model_files / 'qat.keras'}", "--dataset=digits",
                    fragments=("already a QAT model", "tfqat-export"))


def test_corrupt_model_file_is_unreadable(tmp_path, model_files):
    _assert_refused(tmp_path, f"--model={model_files / 'corrupt.keras'}", "--dataset=digits",
                    fragments=("unreadable", "corrupt.keras"))


@pytest.mark.parametrize("changes,fragment", [
    ({"qat_epochs": 0}, "--qat_epochs=0"),
    ({"float_epochs": -1}, "--float_epochs=-1"),
    ({"batch_size": 0}, "--batch_size=0"),
    ({"alpha": 0.0}, "--alpha=0.0"),
    ({"learning_rate": -1.0}, "--learning_rate"),
    ({"quant": tfqat.QuantConfig(activation_bits=10)}, "--activation_bits=10"),
])
def test_pipeline_config_is_validated_before_anything_runs(tmp_path, changes, fragment):
    from tfqat.training.pipeline import PipelineConfig, run

    cfg = PipelineConfig(output_dir=str(tmp_path / "run"), **changes)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        run(cfg)
    assert not (tmp_path / "run").exists()


def test_help_lists_every_flag_in_groups():
    result = subprocess.run(
        [sys.executable, "-c", "import tfqat.cli.train as app; from absl import flags; "
         "own = {f.name for m, fs in flags.FLAGS.flags_by_module_dict().items() "
         "if 'tfqat' in m for f in fs}; grouped = [n for _, ns in app.GROUPS for n in ns]; "
         "print(sorted(own ^ set(grouped)), len(grouped) - len(set(grouped)))"],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["[]", "0"], result.stdout + result.stderr[-2000:]


def test_unknown_strategy_is_refused(tmp_path):
    code, _, err = finish(train_cli("--strategy=tpu", f"--output_dir={tmp_path}"))
    assert code != 0 and "strategy" in err
