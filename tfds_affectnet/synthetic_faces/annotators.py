"""Simulated annotators of ``synthetic_faces``, calibrated on the real AffectNetC25 crowd.

The calibration file (``calibration.json``, written by
``python -m tfds_affectnet.synthetic_faces.calibrate``) holds 50 annotator profiles: the 25
participants of AffectNetC25 set 1 and the 25 of set 2, each with an expression confusion
matrix (rows: true class, canonical order) and, per dimension, a valence / arousal scale,
bias and noise.

A dataset configuration with ``R`` annotators draws its crowd from these profiles with its
seed: ``R`` distinct profiles when ``R <= 50`` (the ``sparse`` config's 50 annotators are the
50 profiles in a seeded order), every profile once and then with replacement beyond. One more
profile (a profile not in the crowd when ``R < 50``) is the "original" annotator, whose single
answer per image fills the ``affectnet_*`` features, as AffectNet's one expert label does.

An annotator ``w`` answers an image of true class ``c``, valence ``v`` and arousal ``a`` with
``expression ~ confusion_w[c]`` and
``valence = quantise(clip(scale_w * v + bias_w + noise_w * N(0, 1), -1, 1))`` (arousal alike),
``quantise`` rounding to the 9 levels -1, -0.75, ..., 1 of the C25 questionnaire.
"""

import functools
import json

import numpy as np

from tfds_affectnet.synthetic_faces.calibrate import CALIBRATION_FILE

__all__ = [
    "VA_KEYS",
    "load_calibration",
    "simulated_annotators",
    "simulate_answers",
]

VA_KEYS = tuple(f"{d}_{k}" for d in ("valence", "arousal") for k in ("scale", "bias", "noise"))
_ANNOTATOR_STREAM = 7  # the seed stream of the annotator draw (images use others)


@functools.lru_cache(maxsize=4)
def _load(path):
    with open(path) as stream:
        calibration = json.load(stream)
    needed = ("annotator", "expression_confusion", "quantisation_levels") + VA_KEYS
    missing = [key for key in needed if key not in calibration]
    if missing:
        raise ValueError(f"Calibration file {path} lacks the keys {missing}.")
    confusion = np.asarray(calibration["expression_confusion"], np.float64)
    count = len(calibration["annotator"])
    if confusion.shape != (count, 8, 8):
        raise ValueError(
            f"Calibration file {path}: expression_confusion must be ({count}, 8, 8). "
            f"Received shape {confusion.shape}."
        )
    if not np.allclose(confusion.sum(-1), 1.0, atol=1e-6) or (confusion < 0).any():
        raise ValueError(f"Calibration file {path}: confusion rows must be distributions.")
    return calibration


def load_calibration(path=None):
    """The calibration dict (JSON lists); the shipped file by default."""
    return _load(str(path or CALIBRATION_FILE))


def simulated_annotators(builder_config, calibration_path=None):
    """The simulated crowd of a ``synthetic_faces`` configuration (deterministic in its seed).

    Args:
        builder_config: a :class:`SyntheticFacesConfig` (its ``num_annotators`` and ``seed``
            are used), or the name of a built-in config (``"c25_dense"``, ``"sparse"``,
            ``"tiny"``).
        calibration_path: another calibration file (default: the shipped one).

    Returns:
        dict with ``profiles`` (``(R,)`` indices into the calibration), ``annotator_names``,
        ``expression_confusion`` ``(R, 8, 8)`` (rows: true class, columns: answer, canonical
        order), ``valence_scale``, ``valence_bias``, ``valence_noise``, ``arousal_scale``,
        ``arousal_bias``, ``arousal_noise`` ``(R,)``, ``quantisation_levels`` ``(9,)``, and
        ``original``: the same keys for the one "original" annotator (leading dimension 1).
    """
    if isinstance(builder_config, str):
        from tfds_affectnet.synthetic_faces.synthetic_faces_dataset_builder import Builder

        named = {config.name: config for config in Builder.BUILDER_CONFIGS}
        if builder_config not in named:
            raise ValueError(
                f"Unknown synthetic_faces config; known: {sorted(named)}. "
                f"Received: builder_config={builder_config!r}"
            )
        builder_config = named[builder_config]
    calibration = load_calibration(calibration_path)
    pool = len(calibration["annotator"])
    count = int(builder_config.num_annotators)
    rng = np.random.default_rng([int(builder_config.seed), _ANNOTATOR_STREAM])
    order = rng.permutation(pool)
    if count < pool:
        crowd, original = order[:count], order[count : count + 1]
    else:  # every profile once, then drawn with replacement; the original from the pool
        crowd = np.concatenate([order, rng.integers(0, pool, count - pool)])
        original = rng.integers(0, pool, 1)

    def profile(indices):
        result = {
            "profiles": indices.astype(np.int64),
            "annotator_names": [calibration["annotator"][i] for i in indices],
            "expression_confusion": np.asarray(calibration["expression_confusion"])[indices],
            "quantisation_levels": np.asarray(calibration["quantisation_levels"], np.float64),
        }
        for key in VA_KEYS:
            result[key] = np.asarray(calibration[key], np.float64)[indices]
        return result

    result = profile(crowd)
    result["original"] = profile(original)
    return result


def _quantise(values, levels):
    step = levels[1] - levels[0]
    return np.clip(levels[0] + np.round((values - levels[0]) / step) * step, levels[0], levels[-1])


def simulate_answers(annotators, expression, valence, arousal, answers_per_image, rng):
    """The crowd's answers on one image.

    Args:
        annotators: a dict from :func:`simulated_annotators` (or its ``original`` entry).
        expression: the image's true class (canonical order).
        valence: the image's true valence.
        arousal: the image's true arousal.
        answers_per_image: how many distinct annotators answer (chosen at random); all of
            them when it is at least their number.
        rng: a ``numpy.random.Generator``.

    Returns:
        ``(expression answers int64 (R,), valence float32 (R,), arousal float32 (R,))`` with
        -1 / NaN for the annotators who did not answer.
    """
    confusion = annotators["expression_confusion"]
    count = len(confusion)
    answering = np.zeros(count, bool)
    if answers_per_image >= count:
        answering[:] = True
    else:
        answering[rng.choice(count, size=int(answers_per_image), replace=False)] = True
    cumulative = np.cumsum(confusion[:, int(expression)], axis=1)
    draws = rng.random(count)
    answers = np.minimum((draws[:, None] > cumulative).sum(axis=1), confusion.shape[-1] - 1)
    expression_answers = np.where(answering, answers, -1).astype(np.int64)
    levels = annotators["quantisation_levels"]
    result = [expression_answers]
    for dimension, truth in (("valence", valence), ("arousal", arousal)):
        latent = (
            annotators[f"{dimension}_scale"] * truth
            + annotators[f"{dimension}_bias"]
            + annotators[f"{dimension}_noise"] * rng.standard_normal(count)
        )
        values = _quantise(np.clip(latent, -1.0, 1.0), levels)
        result.append(np.where(answering, values, np.nan).astype(np.float32))
    return tuple(result)
