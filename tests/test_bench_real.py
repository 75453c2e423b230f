"""bench/real.py: bad --data refused before training, the BENCHMARKS.md section swap, and the
--quick preset end to end on the CIFAR-10 JPEG copy (slow)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import real_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def _load_real():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_real", BENCH / "real.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _bench(*args, timeout=60):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(BENCH / "real.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_data_is_refused_with_the_file_named(tmp_path):
    done = _bench(f"--data={tmp_path / 'missing.npz'}", "--quick")
    assert done.returncode != 0 and "missing.npz: no such file" in done.stderr
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 3)))
    done = _bench(f"--data={wrong}", "--quick")
    assert done.returncode != 0 and "x_train, y_train, x_test, y_test" in done.stderr
    assert "--data" in _bench("--help").stdout


def test_section_goes_between_markers_and_is_replaced_on_the_next_run(tmp_path):
    real = _load_real()
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n## B1\nfigures\n")
    real.update_benchmarks("## Real data\nfirst\n", benchmarks)
    real.update_benchmarks("## Real data\nsecond\n", benchmarks)
    text = benchmarks.read_text()
    assert text.startswith("# Benchmarks\n\n## B1\nfigures\n")
    assert "second" in text and "first" not in text and text.count(real.SECTION_START) == 1


@pytest.mark.slow
def test_quick_preset_writes_report_plot_and_json(tmp_path):
    data = os.path.join(real_data.shared_data_dir(), "cifar10_jpeg.npz")
    output = tmp_path / "REAL.md"
    done = _bench(f"--data={data}", "--quick", f"--output={output}", "--tfmot_python=none",
                  timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    text = output.read_text()
    for fragment in ("## Real data (CIFAR-10, JPEG copy)", "### Targets", "### resnet8",
                     "### vit_tiny", "Reduced schedule", "8-bit per-tensor", "4-bit weights",
                     "converter PTQ", "tfqat QAT", "XNNPACK", "evaluate_int8 vs the .tflite"):
        assert fragment in text, fragment
    for png in ("real_int8_accuracy.png", "real_float_curves.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    results = json.loads((tmp_path / "plots" / "real_results.json").read_text())
    assert [run["model"] for run in results["runs"]] == ["resnet8", "vit_tiny"]
    for run in results["runs"]:
        rows = run["rows"]
        assert set(rows) == {"8-bit per-channel", "8-bit per-tensor", "4-bit weights"}
        qat = rows["8-bit per-channel"]["tfqat QAT"]
        # Its .tflite follows it on every kernel set.
        for scores in (qat, qat["xnnpack"], qat["reference"]):
            assert scores["agreement"] > 0.8 and scores["mean_lsb"] < 1.0, scores
        # evaluate_int8 stays within an LSB or so of the .tflite (not bit for bit: SOFTMAX
        # follows the builtin kernel's float table, which the reference kernel's fixed point
        # differs from by 1 LSB near halves, and vit_tiny has one per attention block).
        for kernels in ("reference", "xnnpack"):
            assert run["int8_eval"][kernels]["max_lsb"] <= 3, run["int8_eval"]
        assert len(run["float"]["test_accuracy_per_epoch"]) == 2
    # On ResNet-8 it gives the .tflite's top-1 on both kernel sets. (On the quick schedule
    # vit_tiny's outputs are nearly uniform, so a 1-LSB difference flips many ties.)
    resnet8 = results["runs"][0]["int8_eval"]
    assert min(resnet8[k]["top1"] for k in resnet8) >= 0.99, resnet8
    # Far above chance (10%) even on the quick schedule.
    assert results["runs"][0]["rows"]["8-bit per-channel"]["tfqat QAT"]["int8"] > 0.2


def test_bench_run_report_keeps_the_real_data_section(tmp_path):
    real = _load_real()
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.REAL_DATA_MARKERS == (real.SECTION_START, real.SECTION_END)
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\nold figures\n")
    real.update_benchmarks("## Real data\nCIFAR rows\n", benchmarks)
    text = report.keep_real_data_section(benchmarks, "# Benchmarks\nnew figures\n")
    assert "new figures" in text and "old figures" not in text and "CIFAR rows" in text
    assert report.keep_real_data_section(tmp_path / "absent.md", "x\n") == "x\n"
    # bench/bn_fold.py's section is kept the same way.
    real.update_benchmarks("## BatchNorm fold modes\nfold rows\n", benchmarks,
                           markers=report.BN_FOLD_MARKERS)
    text = report.keep_real_data_section(benchmarks, "# Benchmarks\nnewer figures\n")
    assert "CIFAR rows" in text and "fold rows" in text and "new figures" not in text
