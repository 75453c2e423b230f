"""`tfqat-train`: float training -> QAT -> int8 export -> evaluation, in one run.

Usage:
  tfqat-train                                   # lenet5 on MNIST-5k, into runs/default
  tfqat-train --model=mobilenet_v2 --alpha=0.35 --input_size=96 --dataset=npz:data.npz
  tfqat-train --output_dir=runs/a --resume      # continue a killed run
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tfqat.cli import flags as cli  # noqa: E402

PROGRAM = "tfqat-train"

flags.DEFINE_string("model", "lenet5", "A zoo model (lenet5, convnet_bn, resnet8, mobilenet_v1, "
                    "mobilenet_v2, small_resnet, vit_tiny, kws_gru, kws_lstm) or the path of a "
                    "saved float .keras model.")
flags.DEFINE_string("dataset", "mnist5k", "mnist5k | digits | keras:mnist|fashion_mnist|cifar10 | "
                    "tfds:NAME | npz:PATH (arrays x_train, y_train, x_test, y_test).")
flags.DEFINE_string("data_dir", None, "Data folder for tfds datasets.")
flags.DEFINE_float("alpha", 1.0, "Width multiplier of the MobileNets.")
flags.DEFINE_integer("input_size", None, "Square input size for the MobileNets (default 32).")
flags.DEFINE_integer("float_epochs", 8, "Float training epochs (0 skips float training).")
flags.DEFINE_integer("qat_epochs", 2, "QAT fine-tuning epochs.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate of float training (cosine decay).")
flags.DEFINE_float("qat_learning_rate", 1e-4, "Peak Adam learning rate of QAT (cosine decay).")
cli.define_quant_flags()
flags.DEFINE_string("output_dir", "runs/default", "Where models, metrics, logs and checkpoints go.")
flags.DEFINE_integer("seed", 0, "Seed of weights, data split and batch order.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy; multi_worker reads TF_CONFIG.")
flags.DEFINE_enum("reestimate_bn", "auto", ["auto", "on", "off"],
                  "Recompute BatchNorm moving statistics from training data after float "
                  "training: auto does it when BN momentum is too high for the run's step count.")
flags.DEFINE_boolean("resume", False, "Continue from the last checkpoint in --output_dir.")
cli.define_verbose_flag()

GROUPS = (
    ("Model and data", ("model", "dataset", "data_dir", "alpha", "input_size")),
    ("Training", ("float_epochs", "qat_epochs", "batch_size", "learning_rate",
                  "qat_learning_rate", "seed", "strategy", "reestimate_bn")),
    ("Quantization (one flag per QuantConfig field)", cli.QUANT_FLAGS),
    ("Outputs", ("output_dir", "resume", "verbose")),
)

FLAGS = flags.FLAGS


def main(argv):
    cli.quiet_logging()
    cli.apply_verbose(FLAGS.verbose)
    if len(argv) > 1:
        cli.fail(PROGRAM, f"unexpected arguments {argv[1:]}; all options are --flags.")
    from tfqat.training import pipeline

    try:
        config = pipeline.PipelineConfig(
            model=FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, alpha=FLAGS.alpha,
            input_size=FLAGS.input_size, float_epochs=FLAGS.float_epochs,
            qat_epochs=FLAGS.qat_epochs, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate, qat_learning_rate=FLAGS.qat_learning_rate,
            quant=cli.quant_config_from_flags(FLAGS), output_dir=FLAGS.output_dir,
            seed=FLAGS.seed, strategy=FLAGS.strategy, resume=FLAGS.resume,
            reestimate_bn=FLAGS.reestimate_bn)
        config.validate()
        metrics = pipeline.run(config)
    except (ValueError, FileNotFoundError, ImportError, OSError) as err:
        cli.fail(PROGRAM, str(err))
    print(pipeline.summary_table(metrics))
    print(f"Outputs in {os.path.abspath(FLAGS.output_dir)}: {', '.join(pipeline.OUTPUTS)}")


def run():
    """Console-script entry point."""
    app.run(main, flags_parser=cli.flags_parser(PROGRAM, __doc__, GROUPS))


if __name__ == "__main__":
    run()
