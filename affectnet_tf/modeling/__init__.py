"""Backbones, task heads and models, losses and metrics."""
