"""tfqat-train as a real subprocess: the whole job, bad flags, and kill + --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfqat  # noqa: F401  registers the layers for load_model

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
    metrics = load_metrics(tmp_path)
    assert metrics["int8_accuracy"] > 0.8 and metrics["tflite_qat_agreement"] >= 0.97
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


@pytest.mark.parametrize("flag,fragment", [
    ("--weight_bits=1", "weight_bits"),
    ("--dataset=imagenet", "imagenet"),
    ("--model=nope", "nope"),
    ("--bn_freeze_delay=-3", "bn_freeze_delay"),
])
def test_bad_flag_values_give_one_line_errors(tmp_path, flag, fragment):
    code, _, err = finish(train_cli(flag, f"--output_dir={tmp_path}", "--float_epochs=0"))
    assert code == 2
    (line,) = [l for l in err.splitlines() if l.startswith("tfqat-train: error:")]
    assert fragment in line and "Traceback" not in err


def test_unknown_strategy_is_refused(tmp_path):
    code, _, err = finish(train_cli("--strategy=tpu", f"--output_dir={tmp_path}"))
    assert code != 0 and "strategy" in err
