"""tf.distribute support: strategy from a name, the chief test, and a training
loop for MultiWorkerMirroredStrategy, which Keras 3's model.fit does not run
(keras-team/keras#20585: batches arrive as PerReplica values it cannot convert).

tfqat's layers aggregate batch statistics and activation ranges across
replicas themselves (see layers.py and quantizers.py).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default | mirrored (all local devices) | multi_worker (configured by TF_CONFIG).

    Example:
      >>> strategy = make_strategy("mirrored")
      >>> with strategy.scope():
      ...     qat = tfqat.quantize_model(model)
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster and task) on every worker; see the README.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_index(strategy) -> int:
    """This worker's index in a multi-worker cluster; 0 elsewhere (the chief writes outputs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return 0
    offset = 1 if "chief" in resolver.cluster_spec().jobs else 0
    return int(resolver.task_id) + offset


def fit_epoch_custom(model, strategy, x, y, batch_size: int) -> float:
    """One epoch over (x, y) in order, global batch `batch_size`, split across all replicas.

    Uses the model's compiled optimizer and sparse categorical cross-entropy.
    Returns the mean training loss.

    Example:
      >>> with strategy.scope():
      ...     qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
      >>> fit_epoch_custom(qat, strategy, x_train, y_train, batch_size=64)
    """
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    options = tf.data.Options()
    # Every worker holds all the data; DATA sharding splits each global batch between them.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = strategy.experimental_distribute_dataset(dataset.with_options(options))
    optimizer = model.optimizer
    if getattr(model, "_tfqat_custom_step", None) is None:
        def replica_step(inputs, labels):
            with tf.GradientTape() as tape:
                predictions = model(inputs, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, predictions)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        @tf.function
        def step(batch):
            per_replica = strategy.run(replica_step, args=batch)
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        model._tfqat_custom_step = step
    losses = [float(model._tfqat_custom_step(batch)) for batch in batches]
    return sum(losses) / max(len(losses), 1)
