"""The job behind tfqat-train: datasets, the model zoo, the training pipeline, tf.distribute."""
