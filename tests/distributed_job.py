"""Trains a tiny QAT model under a tf.distribute strategy and saves its variables.

Run as a script (TF's devices must be set up before anything else touches TF):
  python distributed_job.py --strategy single|mirrored|multi_worker --out weights.npz
multi_worker reads TF_CONFIG.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["single", "mirrored", "multi_worker"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import tensorflow as tf

    if args.strategy == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if args.strategy == "mirrored"
                    else tf.distribute.get_strategy())

    import keras
    import numpy as np

    import tfqat
    from tiny_models import mixed_model, random_images, randomize_batchnorm

    keras.utils.set_random_seed(0)
    x = random_images(64)
    y = np.arange(64) % 4
    with strategy.scope():
        model = randomize_batchnorm(mixed_model())
        # 16 bits: replicas must agree to float precision, not up to 8-bit rounding flips.
        config = tfqat.QuantConfig(weight_bits=16, activation_bits=16, bn_freeze_delay=3)
        qat = tfqat.quantize_model(model, config)
        qat.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    if args.strategy == "multi_worker":
        from tfqat.training.distribute import fit_epoch_custom

        for _ in range(2):
            fit_epoch_custom(qat, strategy, x, y, batch_size=16)
    else:
        qat.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.savez(args.out, **{v.path: v.numpy() for v in qat.weights})


if __name__ == "__main__":
    main()
