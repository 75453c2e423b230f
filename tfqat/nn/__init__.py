"""The QAT building blocks: fake quantizers and the quantized Keras layers (BN folding)."""
