"""Evaluation: scores on a data role, reports and plots, agreement with the human annotators."""
