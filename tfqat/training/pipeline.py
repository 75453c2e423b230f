"""The whole job behind `tfqat-train`: float training -> QAT -> export -> evaluation.

Every epoch ends with a checkpoint (model, optimizer state, step counters,
ranges, BN state) and a small state file, so a killed run continues with
`resume=True` and ends where an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tfqat.training import data as data_lib
from tfqat.training import models as models_lib
from tfqat.training import distribute
from tfqat.calibration import batchnorm as batchnorm_lib
from tfqat.config import EXPORT_MAX_BITS, QuantConfig
from tfqat.diagnostics.evaluation import compare_to_model
from tfqat.files import atomic_write_bytes
from tfqat.logs import quiet_native_output
from tfqat.nn.activations import QuantActivation
from tfqat.nn.layers import FusedQuantLayer
from tfqat.nn.quantizers import ActivationQuantizer
from tfqat.export.tflite import export_tflite
from tfqat.rewrite.graph import flatten_model
from tfqat.rewrite.quantize import quantize_model
from tfqat.rewrite import graph

# What a finished run leaves in output_dir (tfqat-train's closing line lists them).
OUTPUTS = ("float.keras", "qat.keras", "model_int8.tflite", "model_float.tflite", "metrics.json",
           "logs/", "ckpt/")


REESTIMATE_BN_MODES = ("auto", "on", "off")
# At most this many training batches feed BatchNorm re-estimation.
REESTIMATE_BN_BATCHES = 200
# "auto" re-estimates when the initial moving statistics still weigh more than this.
UNSETTLED_WEIGHT = 0.01


@dataclasses.dataclass
class PipelineConfig:
    """Everything one run needs; `tfqat-train` fills it from its flags."""

    model: str = "lenet5"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    alpha: float = 1.0
    input_size: int | None = None
    float_epochs: int = 8
    qat_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 2e-3
    qat_learning_rate: float = 1e-4
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    output_dir: str = "runs/default"
    seed: int = 0
    strategy: str = "default"
    resume: bool = False
    verbose: int = 2
    reestimate_bn: str = "auto"  # auto | on | off: see reestimate_bn_after_float_training


    def validate(self) -> None:
        """Raises ValueError naming the flag for a value the job cannot run with.

        Called before anything is loaded, trained or written.

        Example:
          >>> PipelineConfig(batch_size=0).validate()
          Traceback (most recent call last):
          ValueError: --batch_size=0: must be at least 1.
        """
        at_least = (("float_epochs", 0), ("qat_epochs", 1), ("batch_size", 1))
        for name, low in at_least:
            value = getattr(self, name)
            if value < low:
                raise ValueError(f"--{name}={value}: must be at least {low}.")
        for name in ("alpha", "learning_rate", "qat_learning_rate"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"--{name}={value}: must be greater than 0.")
        if self.input_size is not None and self.input_size < 1:
            raise ValueError(f"--input_size={self.input_size}: must be at least 1.")
        for name in ("weight_bits", "activation_bits"):
            bits = getattr(self.quant, name)
            if bits > EXPORT_MAX_BITS:
                raise ValueError(
                    f"--{name}={bits}: the job exports an int8 .tflite, which needs at most "
                    f"{EXPORT_MAX_BITS} bits.")
        if self.quant.activation_bits != EXPORT_MAX_BITS:
            # TFLite's int8 kernels quantize activations to 8 bits (range / 255): a model
            # trained on a coarser grid is not what would ship, and export refuses it.
            raise ValueError(
                f"--activation_bits={self.quant.activation_bits}: the job exports an int8 "
                f".tflite, whose activations are 8-bit; use --activation_bits=8 (fewer bits "
                "are for simulation with tfqat.quantize_model only).")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise ValueError(f"--output_dir: '{self.output_dir}' exists and is not a folder.")
        if self.reestimate_bn not in REESTIMATE_BN_MODES:
            raise ValueError(f"--reestimate_bn={self.reestimate_bn!r}: use one of "
                             f"{', '.join(REESTIMATE_BN_MODES)}.")


class _Checkpoints:
    """ckpt/<phase>.keras plus ckpt/state.json, each replaced atomically."""

    def __init__(self, output_dir):
        self.folder = os.path.join(output_dir, "ckpt")
        self.state_path = os.path.join(self.folder, "state.json")

    def load_state(self) -> dict:
        if not os.path.exists(self.state_path):
            return {}
        with open(self.state_path) as handle:
            return json.load(handle)

    def model_path(self, phase) -> str:
        return os.path.join(self.folder, f"{phase}.keras")

    def save(self, model, phase, epochs_done, state):
        os.makedirs(self.folder, exist_ok=True)
        save_model_atomically(model, self.model_path(phase))
        state = {**state, "phase": phase, "epochs_done": epochs_done}
        atomic_write_bytes(self.state_path, json.dumps(state, indent=2).encode())
        return state


def save_model_atomically(model, path):
    """model.save through a temporary .keras file that replaces `path` at the end."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class QATSummaries(keras.callbacks.Callback):
    """TensorBoard scalars per epoch: each activation range and each BN's frozen flag."""

    def __init__(self, log_dir):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=epoch):
            for layer in self.model.layers:
                if isinstance(layer, ActivationQuantizer) and layer.fixed_range is None:
                    low, high = layer.current_range()
                    tf.summary.scalar(f"range/{layer.name}/min", low)
                    tf.summary.scalar(f"range/{layer.name}/max", high)
                if isinstance(layer, FusedQuantLayer) and layer.batchnorm is not None:
                    tf.summary.scalar(f"bn_frozen/{layer.name}", float(layer.bn_frozen()))
        self.writer.flush()


def _train_epochs(model, strategy, dataset, cfg, phase, first_epoch, total_epochs, checkpoints,
                  state, extra_callbacks=()):
    log_dir = os.path.join(cfg.output_dir, "logs", phase)
    callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir), *extra_callbacks]
    phase_seed = {"float": 0, "qat": 1}[phase]
    label = {"float": "float", "qat": "QAT"}[phase]
    for epoch in range(first_epoch, total_epochs):
        start = time.perf_counter()
        # The order depends only on (seed, phase, epoch), so a resumed run sees the same batches.
        order = np.random.default_rng([cfg.seed, phase_seed, epoch]).permutation(len(dataset.y_train))
        x, y = dataset.x_train[order], dataset.y_train[order]
        if distribute.is_multi_worker(strategy):
            loss = distribute.fit_epoch_custom(model, strategy, x, y, cfg.batch_size)
            results = f"loss {loss:.4f}"
        else:
            # Keras would print "Epoch 2/2" for the second of 8 epochs, and bar escape codes.
            history = model.fit(x, y, batch_size=cfg.batch_size, epochs=epoch + 1,
                                initial_epoch=epoch, shuffle=False, verbose=0, callbacks=callbacks)
            results = ", ".join(f"{name} {values[-1]:.4f}" for name, values in history.history.items())
        if cfg.verbose:
            print(f"{label} epoch {epoch + 1}/{total_epochs}: {results} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
        _add_time(state, f"{phase}_training_s", start)
        state = checkpoints.save(model, phase, epoch + 1, state)
    return state


def _add_time(state, key, start):
    timings = state.setdefault("timings", {})
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _compile(model, learning_rate, epochs, dataset, batch_size):
    # Cosine decay to zero over the phase: without it, float accuracy on the small
    # offline datasets still jumps by points from epoch to epoch at the end.
    steps = max(1, epochs * -(-len(dataset.y_train) // batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def load_model_file(path, flag="--model"):
    """keras.models.load_model(path, compile=False), with one clear error per way it fails.

    Example:
      >>> load_model_file("runs/a/float.keras")
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag}: no such file '{path}'.")
    if os.path.isdir(path):
        raise ValueError(f"{flag}: '{path}' is a folder; pass a .keras file.")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(f"{flag}: '{path}' is unreadable: not a .keras archive (truncated or "
                         f"corrupt, {os.path.getsize(path):,} bytes). Save the model again.")
    import tfqat  # noqa: F401  registers the tfqat layers

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many kinds for a bad file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{flag}: '{path}' is unreadable as a Keras model ({reason}).") from err


def is_qat_model(model) -> bool:
    """Whether `model` holds tfqat quantizers (made by quantize_model)."""
    return any(isinstance(layer, (FusedQuantLayer, ActivationQuantizer, QuantActivation))
               for layer in graph.all_layers(model))


def _float_model(cfg, dataset):
    if cfg.model.endswith(".keras") or os.path.sep in cfg.model:
        model = load_model_file(cfg.model)
        if is_qat_model(model):
            raise ValueError(
                f"--model: '{cfg.model}' is already a QAT model (it holds tfqat quantizers). "
                f"Export it with tfqat-export --model={cfg.model} --output=model_int8.tflite, "
                "or pass the float model it was made from.")
        return model
    input_shape = models_lib.required_input_shape(cfg.model, cfg.input_size, dataset.input_shape)
    return models_lib.build_model(cfg.model, input_shape=input_shape,
                                  num_classes=dataset.num_classes, alpha=cfg.alpha)


def run(cfg: PipelineConfig) -> dict:
    """Runs the whole job and returns the metrics it also writes to metrics.json.

    Example:
      >>> metrics = run(PipelineConfig(model="lenet5", dataset="digits", output_dir="runs/d"))
      >>> metrics["int8_accuracy"] > 0.9
      True
    """
    cfg.validate()
    strategy = distribute.make_strategy(cfg.strategy)
    if distribute.worker_index(strategy) > 0:  # only the chief writes into output_dir itself
        cfg = dataclasses.replace(
            cfg, output_dir=os.path.join(cfg.output_dir, f"worker-{distribute.worker_index(strategy)}"))
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    checkpoints = _Checkpoints(cfg.output_dir)
    state = checkpoints.load_state() if cfg.resume else {}
    if cfg.resume:
        print(f"Resuming {cfg.output_dir}: {state['phase']} phase, {state['epochs_done']} "
              "epochs done." if state else f"--resume: no checkpoint in {cfg.output_dir}; "
              "starting from the beginning.", flush=True)
    state.setdefault("timings", {})
    dataset = data_lib.load_dataset(cfg.dataset, seed=cfg.seed, data_dir=cfg.data_dir)

    phase, epochs_done = state.get("phase"), state.get("epochs_done", 0)
    float_path = os.path.join(cfg.output_dir, "float.keras")
    with strategy.scope():
        if phase == "qat":
            float_model = keras.models.load_model(float_path)
        elif phase == "float":
            float_model = keras.models.load_model(checkpoints.model_path("float"))
        else:
            float_model = _float_model(cfg, dataset)
            _compile(float_model, cfg.learning_rate, cfg.float_epochs, dataset, cfg.batch_size)
    # Names in --exclude are checked against the model before any training.
    try:
        cfg.quant.check_layer_names(flatten_model(float_model).layer_names())
    except ValueError as err:
        raise ValueError(f"--exclude: {err}") from None
    dataset = data_lib.fit_to_input(dataset, tuple(float_model.inputs[0].shape[1:]))
    os.makedirs(cfg.output_dir, exist_ok=True)
    if phase != "qat":
        state = _train_epochs(float_model, strategy, dataset, cfg, "float",
                              epochs_done if phase == "float" else 0, cfg.float_epochs,
                              checkpoints, state)
        state["bn_reestimation"] = reestimate_bn_after_float_training(float_model, dataset, cfg)
        save_model_atomically(float_model, float_path)

    with strategy.scope():
        if phase == "qat":
            qat_model = keras.models.load_model(checkpoints.model_path("qat"))
        else:
            start = time.perf_counter()
            qat_model = quantize_model(float_model, cfg.quant)
            _compile(qat_model, cfg.qat_learning_rate, cfg.qat_epochs, dataset, cfg.batch_size)
            _add_time(state, "quantize_s", start)
    state = _train_epochs(qat_model, strategy, dataset, cfg, "qat", epochs_done if phase == "qat" else 0,
                          cfg.qat_epochs, checkpoints, state,
                          [QATSummaries(os.path.join(cfg.output_dir, "logs", "qat_ranges"))])
    save_model_atomically(qat_model, os.path.join(cfg.output_dir, "qat.keras"))
    timings = state["timings"]

    start = time.perf_counter()
    int8_path = os.path.join(cfg.output_dir, "model_int8.tflite")
    float_tflite_path = os.path.join(cfg.output_dir, "model_float.tflite")
    export_tflite(qat_model, int8_path)
    float_tflite = _float_tflite(float_model)
    atomic_write_bytes(float_tflite_path, float_tflite)
    timings["export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    float_accuracy = _accuracy(float_model, dataset)
    comparison = compare_to_model(qat_model, int8_path, dataset.x_test, dataset.y_test,
                                  progress=cfg.verbose > 0 and sys.stdout.isatty())
    # What LiteRT's default interpreter computes: XNNPACK rounds some ops differently.
    on_xnnpack = compare_to_model(qat_model, int8_path, dataset.x_test, dataset.y_test,
                                  kernels="xnnpack")
    timings["evaluation_s"] = time.perf_counter() - start
    metrics = {
        "model": cfg.model, "dataset": cfg.dataset,
        "float_accuracy": float_accuracy,
        "qat_accuracy": comparison.model_accuracy,
        "int8_accuracy": comparison.tflite_accuracy,
        "tflite_qat_agreement": comparison.agreement,
        "max_output_diff_lsb": comparison.max_diff_lsb,
        "mean_output_diff_lsb": comparison.mean_diff_lsb,
        "xnnpack": {"int8_accuracy": on_xnnpack.tflite_accuracy,
                    "tflite_qat_agreement": on_xnnpack.agreement,
                    "max_output_diff_lsb": on_xnnpack.max_diff_lsb,
                    "mean_output_diff_lsb": on_xnnpack.mean_diff_lsb},
        "float_tflite_bytes": os.path.getsize(float_tflite_path),
        "int8_tflite_bytes": os.path.getsize(int8_path),
        "wall_time_s": timings,
        "bn_reestimation": state.get("bn_reestimation"),
        "quant_config": cfg.quant.to_dict(),
    }
    atomic_write_bytes(os.path.join(cfg.output_dir, "metrics.json"),
                       json.dumps(metrics, indent=2).encode())
    return metrics


def _float_tflite(float_model) -> bytes:
    """The float model as a .tflite (for its size). A Keras RNN converts to a WHILE loop
    whose tensor lists need a static batch, so that one is converted with batch size 1."""
    with quiet_native_output():
        try:
            return tf.lite.TFLiteConverter.from_keras_model(float_model).convert()
        except Exception:  # ConverterError: "TensorListReserve ... element_shape to be static"
            inputs = keras.Input(batch_shape=(1, *float_model.inputs[0].shape[1:]))
            fixed = keras.Model(inputs, float_model(inputs))
            return tf.lite.TFLiteConverter.from_keras_model(fixed).convert()


def reestimate_bn_after_float_training(model, dataset, cfg) -> dict:
    """Recomputes the float model's BatchNorm statistics when the run could not settle them.

    "auto" does it when float training ran and momentum ** steps (the weight
    the initial mean 0 / variance 1 still has in the EMA) exceeds
    UNSETTLED_WEIGHT for some BN: keras.applications' momentum 0.999 keeps 70%
    of it after 360 steps. "on" always does it, "off" never. Prints what it
    did; returns the record that goes into metrics.json.

    Example:
      >>> reestimate_bn_after_float_training(model, dataset, PipelineConfig(float_epochs=8))
      {'mode': 'auto', 'done': True, ...}
    """
    mode = cfg.reestimate_bn
    if mode not in REESTIMATE_BN_MODES:
        raise ValueError(f"--reestimate_bn={mode!r}: use one of {', '.join(REESTIMATE_BN_MODES)}.")
    momentum = batchnorm_lib.max_momentum(model)
    steps = cfg.float_epochs * -(-len(dataset.y_train) // cfg.batch_size)
    record = {"mode": mode, "done": False, "max_momentum": momentum, "float_steps": steps}
    if momentum is None or mode == "off":
        record["reason"] = "no trainable BatchNorm" if momentum is None else "turned off"
        return record
    weight = batchnorm_lib.unsettled_weight(momentum, steps)
    record["initial_stats_weight"] = weight
    if mode == "auto" and (cfg.float_epochs == 0 or weight <= UNSETTLED_WEIGHT):
        record["reason"] = ("no float training in this run" if cfg.float_epochs == 0 else
                            f"settled: momentum {momentum} ** {steps} steps = {weight:.2g}")
        if cfg.verbose:
            print(f"BatchNorm re-estimation: not needed ({record['reason']}).")
        return record
    start = time.perf_counter()
    batches = min(REESTIMATE_BN_BATCHES, -(-len(dataset.y_train) // cfg.batch_size))
    stats = batchnorm_lib.reestimate_batchnorm(model, dataset.x_train, steps=batches,
                                               batch_size=cfg.batch_size)
    record.update(done=True, layers=len(stats), batches=batches,
                  seconds=time.perf_counter() - start,
                  reason=("requested (--reestimate_bn=on)" if mode == "on" else
                          f"unsettled: momentum {momentum} ** {steps} steps = {weight:.2g} of "
                          "the initial statistics left"))
    print(f"BatchNorm re-estimation: {record['reason']}; recomputed the moving mean and "
          f"variance of {len(stats)} BatchNorms from {batches} training batches "
          f"({record['seconds']:.1f} s; --reestimate_bn=off skips this).")
    return record


def _accuracy(model, dataset) -> float:
    predictions = model.predict(dataset.x_test, batch_size=256, verbose=0)
    return float(np.mean(predictions.argmax(-1) == dataset.y_test))


def summary_table(metrics: dict) -> str:
    """The table `tfqat-train` prints at the end."""
    rows = [
        ("float accuracy", f"{metrics['float_accuracy']:.4f}"),
        ("QAT accuracy", f"{metrics['qat_accuracy']:.4f}"),
        ("int8 TFLite accuracy", f"{metrics['int8_accuracy']:.4f}"),
        ("TFLite vs QAT top-1 agreement", f"{metrics['tflite_qat_agreement']:.4f}"),
        ("max output difference (LSB)", f"{metrics['max_output_diff_lsb']:.1f}"),
        ("int8 TFLite accuracy, XNNPACK", f"{metrics['xnnpack']['int8_accuracy']:.4f}"),
        ("XNNPACK vs QAT top-1 agreement", f"{metrics['xnnpack']['tflite_qat_agreement']:.4f}"),
        ("float .tflite size", f"{metrics['float_tflite_bytes']:,} B"),
        ("int8 .tflite size", f"{metrics['int8_tflite_bytes']:,} B "
                              f"({metrics['int8_tflite_bytes'] / metrics['float_tflite_bytes']:.2f}x)"),
    ]
    rows += [(f"time: {phase}", f"{seconds:.1f} s") for phase, seconds in metrics["wall_time_s"].items()]
    width = max(len(name) for name, _ in rows)
    line = "-" * (width + 24)
    return "\n".join([line] + [f"{name:<{width}}  {value}" for name, value in rows] + [line])
