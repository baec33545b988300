"""The run configuration of the training command: one typed record, its flags and its data roles.

:class:`RunConfig` lists every setting once, with its type, default, choices and help; the
command line (:func:`build_parser`), YAML files (``--config``), ``config.yaml`` in a run folder
and :func:`affectnet_tf.training.run.train` all go through it.

Data roles (:func:`data_roles`): every run uses three disjoint sets of images: ``train``
(fitted), ``selection`` (picks the best epoch: ``--monitor`` on it after each epoch) and
``test`` (reported in ``metrics.json``; never seen before the end):

- ``affectnet``: train = the ``train`` split less a held-out ``selection`` slice; test = the
  official ``validation`` split (AffectNet's test set is not public).
- ``affectnet_c25/<set>``: the set's 800 images cut, stratified by majority vote and seeded
  (``--split-seed``), into train / selection / test (``--selection-fraction``,
  ``--test-fraction``); or ``--folds K`` cross-validation: K runs, each fold the test set once,
  mean and standard deviation reported.
- ``synthetic_faces``: its ``train``, ``validation`` and ``test`` splits.
- ``crowd_images`` (``--manual-dir DIR``, a user's crowd folder): its one ``train`` split cut
  as an affectnet_c25 set is (:mod:`affectnet_tf.training.crowd_folders`).

``--split``, ``--val-split`` and ``--eval-split`` take ``SPLIT`` or ``SPLIT:SUBSET`` (a subset
``train``, ``selection`` or ``test`` of the split's cut) to choose the roles by hand.
"""

import argparse
import dataclasses
import types
import typing

import yaml

import crowd_layers
from affectnet_tf.data.pipeline import SUBSETS, TARGETS, TASKS, VA_TARGETS, Partition
from affectnet_tf.modeling.backbones import BACKBONES
from affectnet_tf.modeling.models import CROWD_LAYERS, DEFAULT_VA_CROWD_LAYER, VA_CROWD_LAYERS
from affectnet_tf.progress import add_verbosity_flags
from affectnet_tf.training.crowd_folders import CROWD_IMAGES, crowd_images_config, folder_classes
from tfds_affectnet.labels import EXPRESSION_NAMES, expression_names

__all__ = [
    "RunConfig",
    "Role",
    "DataRoles",
    "RESUME_NEUTRAL",
    "NOT_SETTINGS",
    "build_parser",
    "parse_config",
    "config_from_args",
    "load_config",
    "data_roles",
    "eval_targets",
    "config_differences",
]

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")

# settings that may differ between a run and its resumption (where things are, not what runs)
RESUME_NEUTRAL = ("resume", "overwrite", "output_dir", "data_dir", "manual_dir", "report")

# flags of the training command that are no setting of the run (never in config.yaml)
NOT_SETTINGS = ("config", "verbose", "quiet")


def _setting(group, default, help_text, choices=None):
    return dataclasses.field(
        default=default, metadata={"group": group, "help": help_text, "choices": choices}
    )


@dataclasses.dataclass
class RunConfig:
    """Every setting of a training run (flag ``--x-y`` is field ``x_y``)."""

    # Data
    dataset: str = _setting(
        "Data",
        "affectnet_c25/set1",
        "TFDS dataset: affectnet_c25/<set> (cut into train / selection / test), affectnet "
        "(test: its validation split), synthetic_faces/<config> (its three splits), or "
        "crowd_images (your folder, --manual-dir DIR; cut like an affectnet_c25 set)",
    )
    split: str | None = _setting(
        "Data", None, "training split, SPLIT or SPLIT:SUBSET (default: from --dataset)"
    )
    val_split: str | None = _setting(
        "Data",
        None,
        "selection data (best epoch), SPLIT or SPLIT:SUBSET (default: the held-out selection "
        "slice of the training split; synthetic_faces: validation)",
    )
    eval_split: str | None = _setting(
        "Data",
        None,
        "test data (metrics.json), SPLIT or SPLIT:SUBSET (default: affectnet's validation, "
        "the test slice of an affectnet_c25 set, synthetic_faces' test)",
    )
    data_dir: str | None = _setting("Data", None, "TFDS data folder")
    manual_dir: str | None = _setting(
        "Data",
        None,
        "manual download folder (first preparation only); the crowd folder of crowd_images",
    )
    stored_image_size: int | None = _setting(
        "Data", None, "prepare/read a dataset configuration storing images of this side"
    )
    selection_fraction: float = _setting(
        "Data", 0.1, "share of a cut split held out for selecting the best epoch"
    )
    test_fraction: float = _setting(
        "Data", 0.2, "share of an affectnet_c25 set held out as the test set"
    )
    split_seed: int = _setting(
        "Data", 0, "seed of the train / selection / test cut (independent of --seed)"
    )
    folds: int | None = _setting(
        "Data",
        None,
        "k-fold cross-validation of an affectnet_c25 set: K runs in RUN/fold_<k>, mean and "
        "s.d. in RUN/metrics.json",
    )
    fold: int | None = _setting("Data", None, "run this fold of --folds only")
    task: str = _setting("Data", "exp", "exp, aro, val, va or all", TASKS)
    target: str = _setting("Data", "mv", "training target", TARGETS)
    va_target: str | None = _setting(
        "Data", None, "valence/arousal target (default: derived from --target)", VA_TARGETS
    )
    ds_convergence: str = _setting(
        "Data",
        "log_likelihood",
        "Dawid-Skene stopping rule for --target ds: log_likelihood (EM to convergence) or "
        "crowdkit (crowd-kit's rule)",
        ("log_likelihood", "crowdkit"),
    )
    num_classes: int = _setting(
        "Data",
        8,
        "8 expressions, or 7 without contempt (crowd_images: the folder's classes.txt; 7 "
        "drops contempt from AffectNet's 8)",
        (7, 8),
    )
    class_balanced: bool = _setting("Data", False, "resample to equal class frequencies")
    augment: bool = _setting("Data", True, "training augmentation")
    # Model
    model: str = _setting("Model", "resnet50", "backbone: " + ", ".join(BACKBONES))
    weights: str | None = _setting(
        "Model",
        "imagenet",
        "imagenet, none, or a weights file (emonet, hsemotion_*: the authors' published file)",
    )
    image_size: int | None = _setting("Model", None, "model input side (default: the backbone's)")
    dropout: float = _setting("Model", 0.2, "dropout before the heads")
    # Crowd
    crowd_layer: str = _setting(
        "Crowd",
        crowd_layers.DEFAULT_CROWD_METHOD,
        "expression crowd layer for --target cv: pooled (Dawid-Skene likelihood of each "
        "image's answers), confusion, geocrowdnet, or a reference layer",
        CROWD_LAYERS,
    )
    crowd_init: str = _setting(
        "Crowd",
        "diagonal",
        "start of a confusion crowd layer (pooled, confusion, geocrowdnet): diagonal (the "
        "layer's own start), ds (Dawid-Skene's matrices of the training answers) or mv (the "
        "annotators' confusions against the vote distribution)",
        ("diagonal", "ds", "mv"),
    )
    va_crowd_layer: str = _setting(
        "Crowd",
        DEFAULT_VA_CROWD_LAYER,
        "valence/arousal crowd layer for --target cv or --va-target cv: latent (the network "
        "as the prior of the latent-truth model, each image's answers pooled; started from "
        "that model fitted on the training answers), gaussian (scale, bias and noise per "
        "annotator, each answer on its own) or a reference connection",
        VA_CROWD_LAYERS,
    )
    # Optimization
    epochs: int = _setting("Optimization", 10, "training epochs")
    batch_size: int = _setting("Optimization", 32, "global batch size (all replicas)")
    learning_rate: float = _setting("Optimization", 1e-3, "Adam learning rate")
    schedule: str = _setting(
        "Optimization", "cosine", "learning-rate schedule", ("constant", "cosine")
    )
    freeze_epochs: int = _setting(
        "Optimization", 0, "epochs training the head only, the backbone frozen, before fine-tuning"
    )
    fine_tune_factor: float = _setting(
        "Optimization", 0.1, "learning-rate factor after unfreezing the backbone"
    )
    class_weights: bool = _setting("Optimization", False, "weight the loss by class")
    label_smoothing: float = _setting("Optimization", 0.0, "label smoothing of expression")
    steps_per_epoch: int | None = _setting(
        "Optimization", None, "steps per epoch (default: one pass)"
    )
    monitor: str = _setting(
        "Optimization", "val_loss", "metric on the selection data that picks the best epoch"
    )
    seed: int = _setting(
        "Optimization", 0, "random seed of the initial weights, order, augmentation"
    )
    deterministic: bool = _setting(
        "Optimization",
        False,
        "TensorFlow op determinism (tf.config.experimental.enable_op_determinism): the same "
        "weights on every rerun on the same machine, GPUs included, at some speed cost",
    )
    # Distribution
    strategy: str = _setting("Distribution", "auto", "tf.distribute strategy", STRATEGIES)
    mixed_precision: bool = _setting("Distribution", False, "mixed_float16 (GPU) training")
    jit_compile: bool = _setting("Distribution", False, "XLA compilation of the train step")
    # Output
    output_dir: str = _setting("Output", "runs/run", "run folder")
    resume: bool = _setting(
        "Output",
        False,
        "require an interrupted run to continue in --output-dir (the same command continues "
        "one anyway; a run with other settings there is an error)",
    )
    overwrite: bool = _setting("Output", False, "delete an existing run folder first")
    report: bool = _setting(
        "Output", True, "write report/ (HTML, Markdown, figures) beside metrics.json"
    )

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            choices = field.metadata["choices"]
            if value is not None and choices is not None and value not in choices:
                raise ValueError(
                    f"`{field.name}` must be one of {list(choices)}. Received: "
                    f"{field.name}={value!r}"
                )
        if isinstance(self.weights, str) and self.weights.lower() == "none":
            self.weights = None
        if self.model not in BACKBONES:
            raise ValueError(
                f"Unknown model {self.model!r}; known models: {', '.join(BACKBONES)}. "
                f"Received: model={self.model!r}"
            )
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"`folds` must be at least 2. Received: folds={self.folds}")
        if self.fold is not None and (self.folds is None or not 0 <= self.fold < self.folds):
            raise ValueError(
                f"`fold` needs --folds and 0 <= fold < folds. Received: fold={self.fold}, "
                f"folds={self.folds}"
            )
        if self.freeze_epochs and not 0 < self.freeze_epochs < self.epochs:
            raise ValueError(
                "`freeze_epochs` must be between 0 and `epochs` (exclusive). Received: "
                f"freeze_epochs={self.freeze_epochs}, epochs={self.epochs}"
            )
        self._check_targets()

    def _check_targets(self):
        """Each head's target decides whether it gets a crowd layer; reject what cannot train."""
        if self.target in ("mean", "median", "latent") and self.task in ("exp", "all"):
            raise ValueError(
                f"--target {self.target} is a valence/arousal target; for --task {self.task} "
                "choose an expression target (mv, soft, ds, cv, original, true) and set "
                f"--va-target {self.target}."
            )
        if self.va_target == "cv" and self.task == "exp":
            raise ValueError("--va-target cv needs a valence/arousal task (aro, val, va, all).")

    @property
    def head_targets(self):
        """``{"expression": target, "valence": va_target, "arousal": va_target}`` as resolved."""
        from affectnet_tf.data.pipeline import default_va_target

        va = self.va_target or default_va_target(self.target)
        return {"expression": self.target, "valence": va, "arousal": va}

    @property
    def crowd_heads(self):
        """The heads trained through a crowd layer (their target is ``cv``)."""
        from affectnet_tf.modeling.models import TASK_HEADS

        targets = self.head_targets
        return tuple(h for h in TASK_HEADS[self.task] if targets[h] == "cv")

    @property
    def partition(self):
        """The :class:`affectnet_tf.data.pipeline.Partition` of a cut split."""
        return Partition(
            selection=self.selection_fraction,
            test=self.test_fraction,
            seed=self.split_seed,
            folds=self.folds,
            fold=self.fold or 0,
        )

    @property
    def resolved_image_size(self):
        return int(self.image_size or BACKBONES[self.model].default_size)

    @classmethod
    def from_dict(cls, settings):
        """From a dict of settings (``-`` or ``_`` in the keys); unknown keys are an error."""
        if isinstance(settings, RunConfig):
            return dataclasses.replace(settings)
        settings = {key.replace("-", "_"): value for key, value in (settings or {}).items()}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"Unknown settings: {unknown}. Known: {sorted(known)}")
        return cls(**settings)

    def to_dict(self):
        return dataclasses.asdict(self)


DEFAULTS = RunConfig().to_dict()


def _flag_type(annotation):
    """``int``, ``float``, ``str`` or ``bool`` of a field's annotation (``X | None`` -> ``X``)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def build_parser():
    """The argparse parser of ``python -m affectnet_tf.train``; defaults are ``None`` so that
    set flags can be told apart from defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m affectnet_tf.train",
        description=(
            "Train an expression / valence / arousal model on AffectNet, AffectNetC25 or the "
            "synthetic faces. Every run uses three disjoint sets of images: train, selection "
            "(the best epoch by --monitor) and test (metrics.json). The same command on the "
            "same --output-dir continues an interrupted run; other settings there are an "
            "error unless --overwrite."
        ),
    )
    parser.add_argument("--config", help="YAML file of settings; flags override it")
    groups = {}
    for field in dataclasses.fields(RunConfig):
        group = field.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"]
        if "(default:" not in help_text:
            help_text = f"{help_text} (default: {field.default})"
        kind = _flag_type(field.type)
        if kind is bool:
            groups[group].add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            groups[group].add_argument(
                flag, type=kind, choices=field.metadata["choices"], default=None, help=help_text
            )
    add_verbosity_flags(groups["Output"])
    return parser


def load_config(path):
    """The settings dict of a YAML file (``--config`` or a run's ``config.yaml``)."""
    with open(path, encoding="utf-8") as stream:
        loaded = yaml.safe_load(stream) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a mapping of settings. Received: {type(loaded)}")
    return {key.replace("-", "_"): value for key, value in loaded.items()}


def parse_config(argv=None):
    """Defaults, then the ``--config`` YAML, then the flags given: a :class:`RunConfig`."""
    return config_from_args(build_parser().parse_args(argv))


def config_from_args(args):
    """The :class:`RunConfig` of parsed flags (:func:`build_parser`): defaults, then the
    ``--config`` YAML, then the flags given. The flags that are no setting of the run
    (:data:`NOT_SETTINGS`: ``--config``, ``--verbose``, ``--quiet``) are left out, so they are
    neither saved in ``config.yaml`` nor compared on resuming."""
    settings = load_config(args.config) if args.config else {}
    settings.update(
        {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS and v is not None}
    )
    try:
        return RunConfig.from_dict(settings)
    except ValueError as error:
        raise ValueError(f"{args.config}: {error}" if args.config else str(error)) from None


def config_differences(saved, config):
    """The settings (other than :data:`RESUME_NEUTRAL`) whose values differ: ``[(name, saved,
    now)]``; a setting missing from ``saved`` counts at its default."""
    now = config.to_dict()
    return [
        (name, saved.get(name, DEFAULTS[name]), value)
        for name, value in now.items()
        if name not in RESUME_NEUTRAL and saved.get(name, DEFAULTS[name]) != value
    ]


@dataclasses.dataclass(frozen=True)
class Role:
    """Which images play a role: a split and optionally a subset of its cut."""

    split: str
    subset: str | None = None

    def __str__(self):
        return f"{self.split}:{self.subset}" if self.subset else self.split


@dataclasses.dataclass(frozen=True)
class DataRoles:
    """The dataset of a run, its three roles and the classes its expression head learns
    (AffectNet's 8 or 7, or a crowd folder's own)."""

    name: str
    tfds_config: object
    train: Role
    selection: Role
    test: Role
    class_names: tuple = EXPRESSION_NAMES

    @property
    def dataset_name(self):
        """The TFDS name to load (``name/config`` for a named configuration)."""
        if isinstance(self.tfds_config, str):
            return f"{self.name}/{self.tfds_config}"
        return self.name

    def partition_of(self, role, partition):
        """The cut of ``role``'s split: ``partition``, without a test share when the test
        data comes from another split."""
        if self.test.split == role.split and self.test.subset is not None:
            return partition
        return dataclasses.replace(partition, test=0.0, folds=None, fold=0)

    @property
    def builder_config(self):
        """A ``BuilderConfig`` instance, or None when the name carries the configuration."""
        return None if isinstance(self.tfds_config, str) else self.tfds_config


def _role(text, flag):
    split, _, subset = str(text).partition(":")
    if not split or (subset and subset not in SUBSETS):
        raise ValueError(
            f"--{flag} takes SPLIT or SPLIT:SUBSET with SUBSET one of {', '.join(SUBSETS)}. "
            f"Received: {flag}={text!r}"
        )
    return Role(split, subset or None)


def _tfds_config(base, config_name, stored_image_size, dataset):
    """The configuration to load: a name, None, or a custom one for another stored size."""
    from tfds_affectnet import AffectNetC25Config, AffectNetConfig, SyntheticFaces

    if not stored_image_size:
        return config_name
    size = int(stored_image_size)
    if base == "synthetic_faces":
        named = {c.name: c for c in SyntheticFaces.BUILDER_CONFIGS}
        if (config_name or "c25_dense") not in named:
            raise ValueError(
                f"synthetic_faces has the configs {sorted(named)}. Received: dataset={dataset!r}"
            )
        return named[config_name or "c25_dense"].with_image_size(size)
    if base == "affectnet_c25":
        return AffectNetC25Config(
            name=f"{config_name or 'default'}_{size}",
            image_size=size,
            allow_missing=config_name == "subset",
        )
    return AffectNetConfig(
        name=f"{config_name or 'emotions8'}_{size}",
        image_size=size,
        label_set=config_name or "emotions8",
    )


def data_roles(config):
    """The dataset and the train / selection / test :class:`Role` of a run (module docstring).

    Roles from the same split must be different subsets of its cut (the cut makes them
    disjoint); :func:`affectnet_tf.training.run.train` also checks the file names.
    """
    parts = config.dataset.split("/")
    base = parts[0]
    if base == CROWD_IMAGES:
        return _crowd_images_roles(config)
    set_name = None
    if base == "affectnet_c25" and len(parts) > 1 and parts[-1].startswith("set"):
        set_name = parts.pop()
    if len(parts) > 2:
        raise ValueError(f"`dataset` must be NAME[/CONFIG]. Received: dataset={config.dataset!r}")
    tfds_config = _tfds_config(
        base, parts[1] if len(parts) == 2 else None, config.stored_image_size, config.dataset
    )
    given = {
        name: _role(value, flag) if value else None
        for name, value, flag in (
            ("train", config.split, "split"),
            ("selection", config.val_split, "val-split"),
            ("test", config.eval_split, "eval-split"),
        )
    }
    if base == "affectnet_c25":
        split = given["train"].split if given["train"] else set_name
        if split is None:
            raise ValueError(
                "affectnet_c25 needs a set: --dataset affectnet_c25/set1 or --split set1. "
                f"Received: dataset={config.dataset!r}"
            )
        default = {"train": Role(split, "train"), "selection": Role(split, "selection")}
        default["test"] = Role(split, "test")
    elif base == "synthetic_faces":
        default = {"train": Role("train"), "selection": Role("validation"), "test": Role("test")}
    else:
        default = {
            "train": Role("train", "train"),
            "selection": Role("train", "selection"),
            "test": Role("validation"),
        }
    roles = {name: given[name] or default[name] for name in default}
    if given["train"] and given["train"].subset is None and base != "synthetic_faces":
        roles["train"] = Role(given["train"].split, "train")
    if config.folds is not None and roles["test"] != Role(roles["train"].split, "test"):
        raise ValueError(
            "--folds cross-validates within one cut split (an affectnet_c25 set); the test "
            f"data must be its test subset. Received: eval_split={config.eval_split!r}"
        )
    by_split = {}
    for name, role in roles.items():
        by_split.setdefault(role.split, []).append((name, role))
    for members in by_split.values():
        subsets = [role.subset for _, role in members]
        if len(members) > 1 and (None in subsets or len(set(subsets)) < len(subsets)):
            names = ", ".join(f"{name}={role}" for name, role in members)
            raise ValueError(
                f"The {', '.join(n for n, _ in members)} data overlap: {names}. Roles drawn "
                "from one split must be different subsets of it (train, selection, test)."
            )
    classes = expression_names(config.num_classes)
    return DataRoles(base, tfds_config, roles["train"], roles["selection"], roles["test"], classes)


def _crowd_images_roles(config):
    """The roles of a crowd folder: its one split cut as an affectnet_c25 set is."""
    folder = crowd_images_config(config)
    roles = {name: Role("train", name) for name in ("train", "selection", "test")}
    for name, value, flag in (
        ("train", config.split, "split"),
        ("selection", config.val_split, "val-split"),
        ("test", config.eval_split, "eval-split"),
    ):
        if value:
            role = _role(value, flag)
            if role.split != "train" or role.subset is None:
                raise ValueError(
                    f"crowd_images has one split, train, cut into the subsets train, "
                    f"selection and test: --{flag} train:SUBSET. Received: {flag}={value!r}"
                )
            roles[name] = role
    if config.folds is not None and roles["test"] != Role("train", "test"):
        raise ValueError(
            "--folds cross-validates the crowd folder's train split; the test data must be "
            f"its test subset. Received: eval_split={config.eval_split!r}"
        )
    subsets = [role.subset for role in roles.values()]
    if len(set(subsets)) < 3:
        raise ValueError(
            f"The data roles overlap: {roles}. Roles drawn from one split must be different "
            "subsets of it (train, selection, test)."
        )
    chosen = [roles[name] for name in ("train", "selection", "test")]
    return DataRoles(CROWD_IMAGES, folder, *chosen, folder_classes(config, folder))


def eval_targets(config):
    """The labels the test data is scored against: the truth on synthetic_faces and on a
    crowd_images folder with truth.csv (the expression when it has one; valence and arousal
    when it has every one the task trains, else both against the crowd), else the crowd's
    majority vote and mean (the single label for ``original`` and ``true`` runs).
    They never depend on training settings other than which kind of label the run learns."""
    if config.dataset.split("/")[0] == "synthetic_faces":
        return "true", "true"
    targets = config.head_targets
    if config.dataset == CROWD_IMAGES:
        truth = set(crowd_images_config(config).truth_tasks)
        expression = "true" if "expression" in truth else "mv"
        # one valence/arousal label for both: the truth when it holds every dimension trained
        dimensions = {"val": {"valence"}, "aro": {"arousal"}}.get(config.task)
        va = "true" if (dimensions or {"valence", "arousal"}) <= truth else "mean"
        return expression, va
    expression = targets["expression"]
    exp_target = expression if expression in ("original", "true") else "mv"
    va = targets["valence"]
    va_target = va if va in ("original", "true", "median") else "mean"
    return exp_target, va_target
