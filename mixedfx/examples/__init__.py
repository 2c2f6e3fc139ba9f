"""Runnable examples: ``python -m mixedfx.examples.insteval``."""
