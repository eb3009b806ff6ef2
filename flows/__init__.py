"""Prefect flows: thin orchestration of :mod:`qpe_core` functions."""
