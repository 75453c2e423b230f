"""Stage 3, export: integer-only .tflite conversion, and the one reader of .tflite files."""
