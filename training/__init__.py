"""Cleo's training package: it produces the GGUF weights the app runs.

`training.defaults` builds the default models with `gguf` and `numpy` only; the torch model,
fine-tuning and export need the `train` extra. Importing this package imports nothing
heavy.
"""
