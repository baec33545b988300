"""Inference: face crops, videos, and the predictor used by the predict command and the server."""
