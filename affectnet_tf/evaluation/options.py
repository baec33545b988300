"""The evaluated split as one typed, validated object: :class:`EvaluationOptions`.

An evaluation reads one split of a TFDS dataset (or one role of its cut), at the model's image
size, and scores the model against one kind of label. :class:`EvaluationOptions` holds those
settings; :meth:`EvaluationOptions.for_run` builds them from a run's configuration and the
command line's flags (the one place where the defaults are resolved), and
:meth:`EvaluationOptions.from_mapping` from the plain dict older callers pass. Every field is
checked when the object is made: a wrong value is a ``ValueError`` that names the field.

Example:
    >>> options = EvaluationOptions(name="affectnet_c25/set1", split="set1", image_size=112,
    ...                             target="mv")
    >>> options.batch_size
    32
"""

import dataclasses
import numbers
from collections.abc import Mapping

from affectnet_tf.data.partition import SUBSETS, Partition
from affectnet_tf.data.targets import TARGETS, VA_TARGETS
from affectnet_tf.training.config import eval_targets

__all__ = ["EvaluationOptions"]


@dataclasses.dataclass(frozen=True)
class EvaluationOptions:
    """The evaluated split, how its images are read, and the labels they are scored against.

    Attributes:
        name: the TFDS dataset, ``name`` or ``name/config`` (e.g. ``"affectnet_c25/set1"``).
        split: the split read (e.g. ``"set1"``, ``"validation"``).
        image_size: the side in pixels the images are resized to (the model's input size).
        subset: the role of the split's cut that is evaluated (``"train"``, ``"selection"``,
            ``"test"``), or None (default) for the whole split.
        partition: the cut of the split (:class:`affectnet_tf.data.partition.Partition`), or
            None (default) for the default cut.
        batch_size: images per batch of the model's pass (default 32).
        data_dir: the TFDS data folder (default None: TFDS's own).
        manual_dir: the folder of the manually downloaded files, to prepare the dataset when
            it is not built yet (default None).
        config: a ``BuilderConfig`` instance, or None (default) when ``name`` carries the
            configuration.
        target: the expression label scored against (one of
            :data:`affectnet_tf.data.targets.TARGETS`, e.g. ``"mv"``, ``"original"``,
            ``"true"``), or None (default) when the caller's dataset brings its targets.
        va_target: the valence/arousal label scored against (one of
            :data:`affectnet_tf.data.targets.VA_TARGETS`), or None (default): the one that
            goes with ``target``.

    Raises:
        ValueError: a field of the wrong type or outside its values; the message names it.
    """

    name: str
    split: str
    image_size: int
    subset: str | None = None
    partition: Partition | None = None
    batch_size: int = 32
    data_dir: str | None = None
    manual_dir: str | None = None
    config: object = None
    target: str | None = None
    va_target: str | None = None

    def __post_init__(self):
        for field in ("name", "split"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"`{field}` must be a non-empty string. Received: {field}={value!r}"
                )
        for field in ("image_size", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(
                    f"`{field}` must be a positive integer. Received: {field}={value!r}"
                )
            object.__setattr__(self, field, int(value))
        _check_choice("subset", self.subset, SUBSETS)
        _check_choice("target", self.target, TARGETS)
        _check_choice("va_target", self.va_target, VA_TARGETS)
        if self.partition is not None and not isinstance(self.partition, Partition):
            raise ValueError(
                "`partition` must be None or an affectnet_tf.data.partition.Partition. "
                f"Received: partition={self.partition!r}"
            )
        for field in ("data_dir", "manual_dir"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, str(value))

    @classmethod
    def from_mapping(cls, mapping):
        """The options of a plain dict with the field names as keys (the older
        ``dataset_options`` of :func:`affectnet_tf.evaluation.evaluate.evaluate_model`).

        Raises:
            ValueError: a key that is no field, or a field's value is wrong.
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(
                f"`dataset_options` must be an EvaluationOptions or a dict. Received: {mapping!r}"
            )
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - fields)
        if unknown:
            raise ValueError(
                f"Unknown evaluation options {unknown}; known: {sorted(fields)}. "
                f"Received: {dict(mapping)!r}"
            )
        missing = [name for name in ("name", "split", "image_size") if name not in mapping]
        if missing:
            raise ValueError(f"The evaluation options need {missing}. Received: {dict(mapping)!r}")
        return cls(**mapping)

    @classmethod
    def for_run(cls, config, roles, image_size, *, target=None, va_target=None, batch_size=None):
        """The options of a run's test data: the defaults of its configuration, and the flags.

        Args:
            config: the run's :class:`affectnet_tf.training.config.RunConfig` (its
                ``eval_split`` / ``data_dir`` already set to what the command line asks).
            roles: the run's :class:`affectnet_tf.training.config.DataRoles` (from
                :func:`affectnet_tf.training.config.data_roles`).
            image_size: the model's input size.
            target: the expression label scored against (default: the run's,
                :func:`affectnet_tf.training.config.eval_targets`).
            va_target: the valence/arousal label scored against (default: the run's).
            batch_size: images per batch (default: the run's batch size).
        """
        default_target, default_va = eval_targets(config)
        test = roles.test
        return cls(
            name=roles.dataset_name,
            split=test.split,
            subset=test.subset,
            partition=roles.partition_of(test, config.partition),
            image_size=image_size,
            batch_size=batch_size or config.batch_size,
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            config=roles.builder_config,
            target=target or default_target,
            va_target=va_target or default_va,
        )

    @property
    def title(self):
        """``"NAME SPLIT"``, with ``" (SUBSET)"`` when a subset is evaluated."""
        return f"{self.name} {self.split}" + (f" ({self.subset})" if self.subset else "")


def _check_choice(field, value, choices):
    if value is not None and value not in choices:
        raise ValueError(
            f"`{field}` must be None or one of {tuple(choices)}. Received: {field}={value!r}"
        )
