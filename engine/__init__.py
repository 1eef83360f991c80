"""Cleo's engine: everything that is neither GUI nor torch.

Settings, folders, errors and logging; the model catalog and memory fit (`catalog`, `fit`); the
llama.cpp runtime (`llama_backend`, the only module that imports `llama_cpp`); prompt building
and the context policy (`prompt`); conversations (`conversations`); and the assistant facade
that ties them together and streams `events` (`assistant`). Nothing in this package imports
Qt, torch or `training`.
"""
