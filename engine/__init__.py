"""Cleo's engine: everything that is neither GUI nor torch.

Settings, folders, errors and logging live here today; the model runtime, prompt building,
memory and the assistant facade join them as the issues land. Nothing in this package imports
Qt, torch or `training`.
"""
