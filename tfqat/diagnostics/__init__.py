"""Comparing a QAT model with its .tflite: op fidelity, per-layer reports, end-to-end runs."""
