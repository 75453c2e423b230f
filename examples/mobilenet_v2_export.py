"""MobileNetV2: quantize, calibrate on a few batches, export to int8, inspect.

Post-training quantization through tfqat's own graph: no QAT training, only a
calibration pass sets the activation ranges. With untrained weights (no
internet for ImageNet weights here) the point is the mechanics and the
integer-only check; pass --weights=imagenet where the weights can be fetched.

  python examples/mobilenet_v2_export.py [--alpha 0.35] [--input_size 96] [--method percentile]
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfqat  # noqa: E402
from tfqat.diagnostics import evaluation  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--input_size", type=int, default=96)
    parser.add_argument("--weights", default=None, help="None (random) or imagenet")
    parser.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--calibration_batches", type=int, default=4)
    parser.add_argument("--output", default="runs/mobilenet_v2/mobilenet_v2_int8.tflite")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    shape = (args.input_size, args.input_size, 3)
    model = keras.applications.MobileNetV2(input_shape=shape, alpha=args.alpha, weights=args.weights)
    qat = tfqat.quantize_model(model)
    # Stand-in images; use real ones (preprocessed to [-1, 1]) with real weights.
    images = np.random.default_rng(0).uniform(-1, 1, (args.calibration_batches * 8, *shape))
    images = images.astype(np.float32)
    ranges = tfqat.calibrate(qat, images, method=args.method, batch_size=8)
    print(f"calibrated {len(ranges)} activation ranges with {args.method}")

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tfqat.export_tflite(qat, args.output)
    report = tfqat.inspect_tflite(args.output)
    print(report)
    comparison = evaluation.compare_to_model(qat, args.output, images[:16])
    print(f"\n{model.name}: {model.count_params():,} parameters, integer-only: "
          f"{report.integer_only}, {report.size_bytes:,} bytes, top-1 agreement with the "
          f"QAT model {comparison.agreement:.3f}, max output difference "
          f"{comparison.max_diff_lsb:.0f} LSB")
    return report, comparison


if __name__ == "__main__":
    main()
