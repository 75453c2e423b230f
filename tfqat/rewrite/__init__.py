"""Stage 1, the rewrite: a float Keras graph becomes a QAT graph plus the record of what was done."""
