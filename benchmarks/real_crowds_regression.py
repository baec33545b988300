"""Regression mode of ``benchmarks/bench_real_crowds.py`` (``--task regression``).

Continuous answers in the plain layout: ``answers.txt`` holds floats, ``nan`` = no answer
(items x annotators); ``labels_{train,test}.txt`` (and optional ``labels_valid.txt``) one float
per line; the same feature files as in classification.

Every method trains the benchmark's base network with a linear ``Dense(1)`` output. For
training only, answers and true values are put on a common scale: minus the mean and divided by
the s.d. of all training answers (fitted on the answers, never on a truth); the predictions are
mapped back before they are scored, so every figure is on the data's own scale. Methods:

- ``truth``: the true training values (the ceiling);
- target methods, trained by the squared error on one value per item (items without answers
  left out): ``mean`` (:func:`crowd_layers.mean_answer`), ``median``
  (:func:`crowd_layers.median_answer`) and ``latent_target``
  (``crowd_layers.LatentTruthRegression(truth_prior=False).fit(answers).truth_``);
- crowd heads, trained on the answers themselves: ``latent`` (the default:
  :class:`crowd_layers.CrowdsLatentTruth` started from a fitted
  :class:`crowd_layers.LatentTruthRegression`, weighted by each annotator's number of answers,
  with :class:`crowd_layers.LatentTruthLikelihood`), ``gaussian``
  (:class:`crowd_layers.CrowdsGaussian` with :class:`crowd_layers.MaskedGaussianLikelihood`)
  and ``S+B`` (:class:`crowd_layers.CrowdsRegression` ``conn_type="S+B"`` with
  :class:`crowd_layers.MaskedMultiMSE`); and two ablations that say what makes ``latent``
  better than ``gaussian``: ``latent_cold`` (the same head at its constructor's start: every
  annotator at scale 1, bias 0, noise 0.3, ``tau`` 0.3; not from the aggregator) and
  ``gaussian_raw`` (``gaussian`` with the plain likelihood's gradient,
  ``normalize_precision=False``). ``latent`` against ``gaussian_raw``: one model of the item's
  truth that all its answers share against an independent likelihood per answer;
  ``gaussian_raw`` against ``gaussian``: the precision normalisation.

Scores: Pearson r and the concordance correlation coefficient (CCC, Lin 1989) of the test
predictions against the test truth, mean and s.d. over the seeds. The aggregators (mean, median,
``LatentTruthRegression`` with and without its prior of the truths) predict nothing for the test
items: they are scored on the training items they answer, against the training truth.
"""

import warnings

import keras
import numpy as np

import crowd_layers
from affectnet_tf.modeling.metrics import ccc, pearson
from crowd_layers.checks import check_float_answers

__all__ = [
    "METHODS",
    "TARGET_METHODS",
    "HEAD_METHODS",
    "DEFAULT_METHOD",
    "AGGREGATORS",
    "read_float_answers",
    "read_float_labels",
    "describe",
    "pearson",
    "ccc",
    "fit_aggregators",
    "run_regression",
]

TARGET_METHODS = ("truth", "mean", "median", "latent_target")
#: Crowd heads: the default, then ablations of it and of the former default ``gaussian``.
HEAD_METHODS = ("latent", "latent_cold", "gaussian", "gaussian_raw", "S+B")
METHODS = (*TARGET_METHODS, *HEAD_METHODS)
DEFAULT_METHOD = "latent"
#: The aggregators scored against the training truth, with their row names.
AGGREGATORS = {
    "mean": "mean answer",
    "median": "median answer",
    "latent": "LatentTruthRegression(truth_prior=True)",
    "latent_no_prior": "LatentTruthRegression(truth_prior=False)",
}


def read_float_answers(path):
    """``answers.txt`` of a regression crowd: float ``(items, annotators)``, NaN = no answer."""
    try:
        answers = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise ValueError(
            f"{path}: expected whitespace-separated floats, one row per item and one column per "
            f"annotator, nan = no answer ({error})"
        ) from error
    try:
        answers = check_float_answers(answers)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if answers.size == 0 or not np.isfinite(answers).any():
        raise ValueError(f"{path}: no answer at all (every value is nan); shape {answers.shape}")
    observed = answers[np.isfinite(answers)]
    if observed.size == answers.size and np.all(observed == np.round(observed)) and -1 in observed:
        raise ValueError(
            f"{path}: integers with -1 and no nan: a classification crowd (-1 = no answer)? "
            "In regression, nan marks a missing answer; run without --task regression"
        )
    return answers


def read_float_labels(path):
    """A ``labels_*.txt`` of a regression crowd: one finite float per line."""
    try:
        labels = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as error:
        raise ValueError(f"{path}: expected one float per line ({error})") from error
    if labels.ndim != 1:
        raise ValueError(f"{path}: expected one float per line; found {labels.shape[1]} columns")
    if not np.all(np.isfinite(labels)):
        raise ValueError(
            f"{path}: the true values must be finite; found {int((~np.isfinite(labels)).sum())} "
            "nan or inf"
        )
    return labels


def _scores(reference, values):
    return {"pearson": pearson(reference, values), "ccc": ccc(reference, values)}


def describe(data):
    """One line about a regression crowd (sizes, answers, ranges)."""
    answers = data["answers"]
    observed = np.isfinite(answers)
    per_item = observed.sum(axis=1)
    return (
        f"{answers.shape[0]} training items, {answers.shape[1]} annotators, regression, "
        f"{int(observed.sum())} answers ({per_item.mean():.2f} per item, "
        f"{per_item.min()}-{per_item.max()}; {observed.sum(axis=0).mean():.1f} per annotator; "
        f"values {np.nanmin(answers):.4g} to {np.nanmax(answers):.4g}), "
        f"{len(data['y_test'])} test items, {data['x_train'].shape[1]} features"
    )


def answer_scale(answers):
    """``(centre, spread)``: the mean and s.d. of all the answers (spread 1 if they are equal)."""
    centre = float(np.nanmean(answers))
    spread = float(np.nanstd(answers))
    return centre, spread if spread > 0 else 1.0


def fit_aggregators(answers):
    """Each aggregator's value per item (NaN where no answer) and the fitted latent models.

    Returns:
        ``({name: (items,) values} for the names of AGGREGATORS, {"latent": model,
        "latent_no_prior": model})``.
    """
    with crowd_layers.quiet_aggregation():
        models = {
            "latent": crowd_layers.LatentTruthRegression(truth_prior=True).fit(answers),
            "latent_no_prior": crowd_layers.LatentTruthRegression(truth_prior=False).fit(answers),
        }
        values = {
            "mean": crowd_layers.mean_answer(answers),
            "median": crowd_layers.median_answer(answers),
            **{name: model.truth_ for name, model in models.items()},
        }
    return values, models


def aggregator_scores(answers, truth):
    """Each aggregator against the training truth, on the items that have an answer."""
    values, _ = fit_aggregators(answers)
    answered = np.isfinite(answers).any(axis=1)
    return {
        name: {**_scores(truth[answered], value[answered]), "items": int(answered.sum())}
        for name, value in values.items()
    }


def crowd_head(method, answers, latent_model):
    """The crowd layer and loss of a regression crowd head (answers on the training scale)."""
    r = answers.shape[1]
    if method == "latent":
        layer = crowd_layers.CrowdsLatentTruth.from_aggregator(
            latent_model, annotator_weights=latent_model.answer_counts_
        )
        return layer, crowd_layers.LatentTruthLikelihood(
            mean_gradient_scale=layer.mean_gradient_scale()
        )
    if method == "latent_cold":
        layer = crowd_layers.CrowdsLatentTruth(r)
        return layer, crowd_layers.LatentTruthLikelihood(
            mean_gradient_scale=layer.mean_gradient_scale()
        )
    if method == "gaussian":
        return crowd_layers.CrowdsGaussian(r), crowd_layers.MaskedGaussianLikelihood()
    if method == "gaussian_raw":
        return crowd_layers.CrowdsGaussian(r), crowd_layers.MaskedGaussianLikelihood(
            normalize_precision=False
        )
    if method == "S+B":
        return crowd_layers.CrowdsRegression(r, conn_type="S+B"), crowd_layers.MaskedMultiMSE()
    raise ValueError(f"`method` must be one of {HEAD_METHODS}. Received: method={method!r}")


def training_targets(data):
    """The answers on the training scale, each target method's values, the latent model."""
    centre, spread = data["scale"]
    scaled = (data["answers"] - centre) / spread
    values, models = fit_aggregators(scaled)
    targets = {
        "truth": (data["y_train"] - centre) / spread,
        "mean": values["mean"],
        "median": values["median"],
        "latent_target": values["latent_no_prior"],
    }
    return {"answers": scaled.astype(np.float32), "latent_model": models["latent"], **targets}


def run_method(method, data, seed, epochs, batch_size, targets, network):
    """Trains one regression method with one seed; its test (and validation) scores.

    ``network(num_features, num_outputs, seed, activation)`` builds the base network."""
    model = network(data["x_train"].shape[1], 1, seed, activation=None)
    fit = {"epochs": epochs, "batch_size": batch_size, "verbose": 0}
    if method in TARGET_METHODS:
        target = targets[method]
        known = np.isfinite(target)
        model.compile(keras.optimizers.Adam(1e-3), loss="mean_squared_error")
        model.fit(data["x_train"][known], target[known, None].astype(np.float32), **fit)
    else:
        layer, loss = crowd_head(method, targets["answers"], targets["latent_model"])
        training = keras.Model(model.inputs, layer(model.outputs[0]))
        training.compile(keras.optimizers.Adam(1e-3), loss=loss)
        training.fit(data["x_train"], targets["answers"], **fit)
    centre, spread = data["scale"]
    scores = {}
    for split in ("test", "valid"):
        if f"x_{split}" in data:
            predicted = model.predict(data[f"x_{split}"], batch_size=1024, verbose=0)[:, 0]
            scores[split] = _scores(data[f"y_{split}"], predicted * spread + centre)
    return scores


def _mean_sd(values):
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _summarise(runs, split):
    """``{metric: (mean, sd, per-seed list)}`` of one method's runs on one split."""
    summary = {}
    for metric in ("pearson", "ccc"):
        per_seed = [run[split][metric] for run in runs]
        summary[metric] = (*_mean_sd(per_seed), per_seed)
    return summary


def run_regression(args, data, network):
    """Every regression method over the seeds, then the aggregators; the JSON summary."""
    data["scale"] = answer_scale(data["answers"])
    targets = training_targets(data)
    results = {}
    print(f"{'method':<14} {'test Pearson r':>17} {'test CCC':>17}   [CCC per seed]")
    for method in args.methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            runs = [
                run_method(method, data, seed, args.epochs, args.batch_size, targets, network)
                for seed in range(args.seeds)
            ]
        results[method] = {split: _summarise(runs, split) for split in runs[0]}
        r, c = results[method]["test"]["pearson"], results[method]["test"]["ccc"]
        marker = "  (default)" if method == DEFAULT_METHOD else ""
        print(
            f"{method:<14} {r[0]:8.4f} ± {r[1]:.4f}  {c[0]:8.4f} ± {c[1]:.4f}"
            f"   [{' '.join(f'{v:.3f}' for v in c[2])}]{marker}",
            flush=True,
        )
    aggregators = aggregator_scores(data["answers"], data["y_train"])
    n = next(iter(aggregators.values()))["items"]
    print(
        f"aggregators: no test predictions (they only see answers), so scored against the "
        f"TRAINING truth of the {n} answered training items:"
    )
    for name, row in aggregators.items():
        print(f"  {AGGREGATORS[name]:<42} r {row['pearson']:.4f}  CCC {row['ccc']:.4f}")
    return _json_summary(results, aggregators)


def _json_summary(results, aggregators):
    def pick(split, index):
        return {
            m: {metric: r[split][metric][index] for metric in ("pearson", "ccc")}
            for m, r in results.items()
            if split in r
        }

    return {
        "methods": pick("test", 0),
        "std": pick("test", 1),
        "per_seed": pick("test", 2),
        "valid": pick("valid", 0),
        "aggregators_train": aggregators,
        "default": DEFAULT_METHOD,
    }
