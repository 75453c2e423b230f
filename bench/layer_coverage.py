"""Layer coverage: every Keras layer class through tfqat, and through TFMOT beside it.

For each public class of `keras.layers` (aliases merged), a probe model
`input -> layer -> [Flatten] -> Dense(2)` (bench/layer_probes.py) goes through
`quantize_model`, `calibrate` on fixed-seed inputs, `export_tflite` and
`op_fidelity`. The row says what happened:

- quantized: exports integer-only, every int8 tensor within 1 LSB op by op;
- pass-through: the layer moves int8 values without arithmetic and keeps its
  input's scale (reshapes, max pooling, padding);
- dropped at export: it acts only in training (augmentation, noise) and leaves no op;
- refused: `quantize_model` (or export) says why, naming the layer;
- failed: anything else (a bug: the table shows the error).

With `--tfmot_python`, the same probes (built with tf_keras) go through
`tfmot.quantization.keras.quantize_model` in TFMOT's own process
(bench/tfmot_worker.py, task "layers"): accepted, or its first error line.

    python bench/layer_coverage.py                         # -> docs/layers.md
    python bench/layer_coverage.py --tfmot_python=.venv-tfmot/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import layer_probes  # noqa: E402
import tfqat  # noqa: E402
from common import atomic_write  # noqa: E402

DOC = ROOT / "docs" / "layers.md"
CALIBRATION, CHECK = 32, 4


def _first_sentence(err) -> str:
    text = " ".join(str(err).split())
    for stop in (". ", "; "):
        if stop in text[:400]:
            return text[:text.index(stop, 0, 400) + 1]
    return text[:300]


def measure(name: str) -> dict:
    """What tfqat does with layer class `name`: {"status": ..., "detail": ...}."""
    if name in layer_probes.NOT_PROBED:
        return {"status": "not probed", "detail": layer_probes.NOT_PROBED[name]}
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    try:
        model, kind, shape = layer_probes.build(keras, name)
    except Exception as err:  # the probe itself does not build: say so
        return {"status": "not probed", "detail": f"probe does not build: {_first_sentence(err)}"}
    try:
        qat = tfqat.quantize_model(model)
    except (tfqat.UnsupportedLayerError, ValueError) as err:
        reason = _first_sentence(err).replace("Cannot quantize layer 'probe' ", "")
        return {"status": "refused", "detail": reason}
    except Exception as err:
        return {"status": "failed", "detail": f"quantize_model: {type(err).__name__}: {_first_sentence(err)}"}
    x = layer_probes.inputs_for(kind, shape, CALIBRATION)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tfqat.calibrate(qat, x)
            flatbuffer = tfqat.export_tflite(qat)
    except tfqat.ExportError as err:
        return {"status": "refused", "detail": f"at export: {_first_sentence(err)}"}
    except Exception as err:
        return {"status": "failed", "detail": f"{type(err).__name__}: {_first_sentence(err)}"}
    decision = tfqat.record_of(qat).decision_of("probe")
    check = [a[:CHECK] for a in x] if isinstance(x, list) else x[:CHECK]
    try:
        fidelity = tfqat.op_fidelity(qat, flatbuffer, check)
    except Exception as err:  # op_fidelity takes one-input models only
        return {"status": "quantized", "detail": f"rule {decision.rule if decision else '?'}; "
                f"op by op not checked ({_first_sentence(err)})"}
    if fidelity.unmatched or fidelity.max_diff_lsb > 1.0 + 1e-3:
        return {"status": "failed", "detail": f"op by op: {fidelity.max_diff_lsb:.1f} LSB, "
                f"unmatched {list(fidelity.unmatched)}"}
    rule = decision.rule if decision else ""
    status = {"inference_identity": "dropped at export",
              "scale_preserving": "pass-through"}.get(rule, "quantized")
    ops = sorted({op.name for op in tfqat.inspect_tflite(flatbuffer).ops})
    return {"status": status, "detail": f"rule {decision.rule if decision else '?'}; "
            f"ops {', '.join(ops)}; max {fidelity.max_diff_lsb:.0f} LSB"}


def tfmot_results(python, names) -> dict:
    """{class name: TFMOT's result} from bench/tfmot_worker.py in its own process."""
    with tempfile.TemporaryDirectory() as folder:
        job, result = pathlib.Path(folder, "job.json"), pathlib.Path(folder, "result.json")
        job.write_text(json.dumps({"task": "layers", "names": names}))
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        subprocess.run([python, str(ROOT / "bench" / "tfmot_worker.py"), str(job), str(result)],
                       check=True, env=env)
        return json.loads(result.read_text())


def render(rows, tfmot, command) -> str:
    counts = {}
    for row in rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [
        "# Layer coverage", "",
        "Every public `keras.layers` class, one row each (aliases in brackets), as",
        "`bench/layer_coverage.py` finds it: a probe model `input -> layer -> [Flatten] ->",
        "Dense(2)` through `quantize_model`, `calibrate`, `export_tflite` (integer-only) and",
        "`op_fidelity` (every int8 tensor within 1 LSB). TFMOT's column is",
        "`tfmot.quantization.keras.quantize_model` on the same probe built with tf_keras",
        "(its own process).", "",
        f"Regenerate: `{command}`", "",
        "Totals (tfqat): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "",
        "| layer | tfqat | detail | TFMOT 0.8.1 |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        alias = f" ({', '.join(row['aliases'])})" if row["aliases"] else ""
        other = tfmot.get(name, "not run")
        detail = row["detail"].replace("|", "/")
        lines.append(f"| {name}{alias} | {row['status']} | {detail} | {other.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(DOC), help="Markdown file to write")
    parser.add_argument("--tfmot_python", default=os.environ.get("TFQAT_TFMOT_PYTHON"),
                        help="python of a virtualenv with TFMOT (else the TFMOT column is 'not run')")
    parser.add_argument("--layers", nargs="*", help="only these classes")
    args = parser.parse_args(argv)
    aliases = layer_probes.aliases(keras)
    names = args.layers or list(aliases)
    rows = {}
    for name in names:
        rows[name] = {**measure(name), "aliases": aliases.get(name, [])}
        print(f"{name}: {rows[name]['status']}", flush=True)
    tfmot = tfmot_results(args.tfmot_python, names) if args.tfmot_python else {}
    command = "python bench/layer_coverage.py --tfmot_python=.venv-tfmot/bin/python"
    atomic_write(args.output, render(rows, tfmot, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
