"""README.md as a user reads it: its Python blocks run as written, its shell lines name real flags."""

import functools
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
APPS = {"tfqat-train": "tfqat.cli.train", "tfqat-export": "tfqat.cli.export",
        "tfqat-inspect": "tfqat.cli.inspect"}


def blocks(language):
    """The bodies of the README's fenced blocks whose fence names `language` ("" = none)."""
    text = README.read_text()
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
            if lang == language]


def test_python_blocks_run_as_written(tmp_path, monkeypatch):
    # One namespace, in order: later blocks continue the quick start, as a reader would.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    sources = blocks("python")
    assert sources, "README.md has no python blocks"
    exec(compile(sources[0], "README.md quick start", "exec"), namespace)
    # The quick start trains for real: a sensible accuracy, and the BN freeze happened.
    import tfqat

    qat = namespace["qat"]
    frozen = [layer.bn_frozen() for layer in qat.layers if isinstance(layer, tfqat.FusedQuantLayer)
              and layer.batchnorm is not None]
    assert frozen and all(frozen), "the quick start's bn_freeze_delay is never reached"
    assert namespace["int8_accuracy"] > 0.9
    assert tfqat.inspect_tflite("model_int8.tflite").integer_only
    for index, source in enumerate(sources[1:], start=2):
        exec(compile(source, f"README.md python block {index}", "exec"), namespace)


@functools.lru_cache(maxsize=None)  # each --help is a fresh process that imports TensorFlow
def _help_flags(module):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", module, "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(re.findall(r"--\[?(?:no)?\]?(\w+)", result.stdout))


def test_shell_lines_use_real_flags():
    used = {}  # app -> flags named in README command lines
    text = "\n".join(blocks("") + blocks("sh") + blocks("bash"))
    text += "\n" + "\n".join(re.findall(r"`(tfqat-\w+ [^`]*)`", README.read_text()))
    for line in text.splitlines():
        for app in APPS:
            if re.search(rf"(^|\s|/){app}(\s|$)", line):
                command = line.split(app, 1)[1].split("#")[0]
                used.setdefault(app, set()).update(re.findall(r"--(\w+)", command))
    assert used.get("tfqat-train"), "no tfqat-train command line found in README.md"
    for app, names in used.items():
        known = _help_flags(APPS[app]) | {"help"}
        assert names <= known, f"{app}: README uses unknown flags {sorted(names - known)}"


def test_flag_lists_in_prose_are_real():
    # "- `--model`: ...", "Training: `--float_epochs`, ..." under "Command-line apps".
    section = README.read_text().split("## Command-line apps", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`--(\w+)`", section))
    known = {"help"}.union(*(_help_flags(module) for module in APPS.values()))
    assert named and named <= known, sorted(named - known)


@pytest.mark.parametrize("app", sorted(APPS))
def test_help_exits_zero(app):
    assert _help_flags(APPS[app])
