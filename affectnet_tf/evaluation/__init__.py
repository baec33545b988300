"""Evaluation: scores on a data role, reports and plots, agreement with the human annotators.

Modules: :mod:`~affectnet_tf.evaluation.evaluate` (``evaluate_model``, ``evaluate_run``),
:mod:`~affectnet_tf.evaluation.options` (``EvaluationOptions``, the evaluated split),
:mod:`~affectnet_tf.evaluation.predictions` (the model's pass over a split, ``image_batches``),
:mod:`~affectnet_tf.evaluation.split_agreement` (the model against single annotators),
:mod:`~affectnet_tf.evaluation.annotators` (a crowd run's learned annotators),
:mod:`~affectnet_tf.evaluation.reports` (the HTML / Markdown report),
:mod:`~affectnet_tf.evaluation.plots` (its figures),
:mod:`~affectnet_tf.evaluation.agreement` (human agreement, leave-one-out) and
:mod:`~affectnet_tf.evaluation.c25` (agreement from the C25 CSVs alone).
"""
