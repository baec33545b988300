"""Training: a run (``run``: ``train``, ``cross_validate``), its configuration, data and
objectives, the fit and worker loops, distribution, the run folder and its backups, the
cross-validation summary, and the video-level classifiers (``video``)."""
