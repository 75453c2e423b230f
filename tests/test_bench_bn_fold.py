"""bench/bn_fold.py: both BatchNorm fold modes measured side by side (--quick, slow)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import real_data

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_preset_measures_both_modes_and_renders_the_section(tmp_path):
    data = os.path.join(real_data.shared_data_dir(), "cifar10_jpeg.npz")
    output = tmp_path / "bn_fold.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bn_fold.py"), f"--data={data}",
                           "--quick", f"--output={output}", "--tfmot_python=none"],
                          env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(output.read_text())
    assert set(results["step_ratios"]) == {"exact before freeze", "approximate before freeze",
                                           "after freeze"}
    float_accuracy = results["accuracy"]["float"]
    for mode in ("exact", "approximate"):
        scores = results["accuracy"][mode]
        # The quick schedule barely trains (about 20 % float on 200 test images): each mode's
        # int8 model keeps the float model's accuracy, and each .tflite follows its QAT model.
        assert scores["int8"] >= float_accuracy - 0.05, (mode, scores, float_accuracy)
        assert scores["agreement"] > 0.9, (mode, scores)
    memory = results["peak_memory"]
    assert set(memory) == {"float", "exact before freeze", "approximate before freeze",
                           "after freeze"}
    for label, figures in memory.items():  # resident sizes of a real TensorFlow process
        assert 100 < figures["resident_mb"] <= figures["peak_mb"], (label, figures)
        assert figures["fit_mb"] > 0, (label, figures)
    assert "| memory the fit adds (MB) |" in done.stdout
    assert '| bn_fold="approximate" |' in done.stdout and "## BatchNorm fold modes" in done.stdout


def test_bench_run_keeps_this_section():
    sys.path.insert(0, str(ROOT / "bench"))
    import bn_fold
    import report

    assert (bn_fold.SECTION_START, bn_fold.SECTION_END) in report.KEPT_SECTIONS
