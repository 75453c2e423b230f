"""bench/run.py end to end on a tiny configuration, so that the runner cannot rot.

The figures mean nothing at this size; the slow cases check that every section
runs and that the report, the plots and the JSON are written. TFMOT is not
needed: without it the report says so and the rest runs. With
$TFQAT_TFMOT_PYTHON naming an interpreter that has TFMOT, one more case runs
the TFMOT worker as well.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECTIONS = ("## Targets", "## Machine and versions", "## B1", "## B2", "## B3", "## B4", "## B5")


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run_quick(tmp_path, *extra):
    output = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--tiny", f"--output={output}", *extra],
        env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "plots" / "results.json").read_text())
    return output.read_text(), results


def _check_report(text, results, tmp_path):
    for heading in SECTIONS:
        assert heading in text
    rounds = results["config"]["b1_rounds"]
    for entry in results["b1"].values():
        times = entry["tfqat"]["times"]
        assert set(times) == {"float", "tfqat before freeze", "tfqat after freeze"}
        assert all(len(series) == rounds for series in times.values())
        assert entry["profile"]["tfqat before freeze"]["conv_kernels"] > \
            entry["profile"]["float"]["conv_kernels"]
    for run in results["b2"]:
        for value in (run["float"], run["tfqat"]["int8"], run["tfqat"]["agreement"]):
            assert 0.0 <= value <= 1.0
    for entry in results["b4"].values():
        # int8 weights are a quarter of float32; quantization parameters add to it.
        assert 0.25 < entry["size_int8"] / entry["size_float"] < 0.5
        for measured in entry["latency"].values():
            assert len(measured["times"]["float"]) >= results["config"]["b4_runs"]
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("b1_step_ratio", "b1_profile", "b2_accuracy", "b3_fidelity",
                     "b4_size_latency", "b5_tool_times"):
            png = tmp_path / "plots" / f"{name}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
            assert f"(plots/{name}.png)" in text


@pytest.mark.slow
def test_quick_runs_without_tfmot(tmp_path):
    text, results = _run_quick(tmp_path, "--tfmot_python=none")
    _check_report(text, results, tmp_path)
    assert results["tfmot"]["available"] is False
    assert "not run (--tfmot_python=none)" in text
    assert all(run["tfmot"] is None for run in results["b2"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TFQAT_TFMOT_PYTHON"),
                    reason="set TFQAT_TFMOT_PYTHON to an interpreter with TFMOT to run it")
def test_quick_runs_with_tfmot(tmp_path):
    text, results = _run_quick(tmp_path)
    _check_report(text, results, tmp_path)
    assert results["tfmot"]["available"] is True, results["tfmot"]["note"]
    assert results["tfmot"]["versions"]["tensorflow-model-optimization"]
    for run in results["b2"]:
        assert run["tfmot"]["float_copy"] == pytest.approx(run["float"], abs=0.02)
    for entry in list(results["b1"].values()) + list(results["b4"].values()):
        assert entry["tfmot"]["same_architecture"] is True


def test_missing_tfmot_interpreter_is_reported_not_fatal(tmp_path):
    run = _load("run")
    tfmot = run.find_tfmot(str(tmp_path / "no-such-python"), tmp_path)
    assert not tfmot.available
    assert "not installed or broken" in tfmot.note
    assert tfmot.run({"task": "probe"}) is None


def test_interleaved_times_rotate_the_order():
    common = _load("common")
    calls = []
    steps = {label: (lambda label=label: calls.append(label)) for label in "abc"}
    times = common.interleaved_times(steps, warmup=1, rounds=3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {label: len(t) for label, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert common.ratio_stats([2.0, 2.0, 4.0], [1.0, 1.0, 1.0])["median"] == 2.0


@pytest.mark.parametrize("name", ["lenet5", "convnet_bn", "resnet8"])
def test_tfmot_side_rebuilds_the_zoo_models(name):
    import keras

    from tfqat.training import models

    common = _load("common")
    shape = (32, 32, 3) if name == "resnet8" else (28, 28, 1)
    rebuilt = common.architecture_summary(common.build(keras, name, shape, 10))
    assert rebuilt == common.architecture_summary(models.build_model(name, shape, 10))
    # The comparison sees a change: another class count changes the last layer's weights.
    assert rebuilt != common.architecture_summary(models.build_model(name, shape, 7))
    assert _load("run").check_same_architecture(
        {"name": name, "input_shape": list(shape), "num_classes": 10}, rebuilt)
