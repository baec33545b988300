"""The data of a training run: its training, selection and test batches, read from the three
disjoint data roles (:func:`affectnet_tf.training.config.data_roles`), and their record.

For example:

```python
from affectnet_tf.training.config import RunConfig, data_roles
from affectnet_tf.training.datasets import RunDatasets

config = RunConfig(dataset="synthetic_faces/tiny", model="compact_cnn", weights=None)
datasets = RunDatasets(config, data_roles(config))
datasets.check_disjoint()
first_epoch = datasets.train(0, 1)
```
"""

import logging
import math
import os

import tensorflow as tf

from affectnet_tf.data import pipeline as data
from affectnet_tf.training.config import eval_targets

__all__ = ["RunDatasets", "log_data_summary"]

logger = logging.getLogger(__name__)


class RunDatasets:
    """The data of a run: ``train(start, stop)`` (the training batches of those epochs), the
    ``selection`` batches, the infos of all three roles (the test images are read by the
    evaluation), and the record of the roles.

    Args:
        config: the run's :class:`affectnet_tf.training.config.RunConfig`.
        roles: its :class:`affectnet_tf.training.config.DataRoles`.
        replicas: the replicas in sync (a multi-replica run trains on full batches only).
    """

    def __init__(self, config, roles, replicas=1):
        self.config, self.roles = config, roles
        exp_target, va_target = eval_targets(config)
        self.eval_targets = {"target": exp_target, "va_target": va_target}
        training = dict(target=config.target, va_target=config.va_target)
        self._train_options = dict(
            training=True,
            augment=config.augment,
            class_balanced=config.class_balanced,
            # Keras and tf.distribute fail on a last batch split unequally over replicas: a
            # multi-replica run skips the few images of a partial training batch (a new draw
            # each epoch) and pads its validation batches with images marked missing
            drop_remainder=replicas > 1 or config.strategy == "tpu",
            seed=config.seed,
            **training,
        )
        _, self.train_info = self._make(roles.train, epochs=(0, 1), **self._train_options)
        self.selection, self.selection_info = self._make(
            roles.selection, pad_to_multiple=replicas, **training
        )
        _, self.test_info = self._make(roles.test, **self.eval_targets)
        self.steps = self._steps_per_epoch(replicas)

    def _steps_per_epoch(self, replicas):
        """``--steps-per-epoch``, or one pass over the training images."""
        config = self.config
        batches = self.train_info.num_examples / config.batch_size
        drop = self._train_options["drop_remainder"]
        if drop and batches < 1:
            raise ValueError(
                f"{self.train_info.num_examples} training images make no full batch of "
                f"--batch-size {config.batch_size}, and a run on {replicas} replicas (or a TPU) "
                "trains on full batches only: lower --batch-size."
            )
        per_pass = math.floor(batches) if drop else math.ceil(batches)
        return int(config.steps_per_epoch or max(1, per_pass))

    def _make(self, role, **kwargs):
        config = self.config
        size = config.resolved_image_size
        dataset, info = data.make_dataset(
            self.roles.dataset_name,
            role.split,
            subset=role.subset,
            partition=self.roles.partition_of(role, config.partition),
            task=config.task,
            num_classes=len(self.roles.class_names),
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            config=self.roles.builder_config,
            batch_size=config.batch_size,
            image_size=size,
            ds_convergence=config.ds_convergence,
            return_info=True,
            **kwargs,
        )
        # static image shapes: the model then skips its resize, whose kernel XLA cannot compile
        dataset = dataset.map(lambda x, y: (tf.ensure_shape(x, [None, size, size, 3]), y))
        return dataset, info

    def train(self, start, stop):
        """The training batches of epochs ``start .. stop - 1`` (``steps`` per epoch)."""
        dataset, _ = self._make(
            self.roles.train,
            epochs=(start, stop),
            steps_per_epoch=self.steps,
            **self._train_options,
        )
        return dataset

    @property
    def infos(self):
        """``{"train": info, "selection": info, "test": info}``."""
        return {
            "train": self.train_info,
            "selection": self.selection_info,
            "test": self.test_info,
        }

    def check_disjoint(self):
        """Raises ``ValueError`` if two roles share an image (by file name)."""
        sets = {role: set(info.file_names) for role, info in self.infos.items()}
        for first, second in (("train", "selection"), ("train", "test"), ("selection", "test")):
            shared = sets[first] & sets[second]
            if shared:
                raise ValueError(
                    f"The {first} and {second} data share {len(shared)} images (e.g. "
                    f"{sorted(shared)[0]!r}): {first}={getattr(self.roles, first)}, "
                    f"{second}={getattr(self.roles, second)}. Choose disjoint roles."
                )

    def record(self):
        """Split, subset, image count and file-name hash of each role (config.yaml,
        metrics.json)."""
        return {name: self._role_record(name, info) for name, info in self.infos.items()}

    def _role_record(self, role_name, info):
        role = getattr(self.roles, role_name)
        entry = {
            "split": role.split,
            "subset": role.subset,
            "images": info.num_examples,
            "file_names_sha256": info.file_names_sha256,
            "tied_majority_votes": info.tied_items,
            "left_out": info.dropped,  # images of the role without the needed labels
        }
        if role.subset is not None:
            cut = self.roles.partition_of(role, self.config.partition)
            entry["cut"] = {
                "selection": cut.selection,
                "test": cut.test,
                "seed": cut.seed,
                "folds": cut.folds,
                "fold": cut.fold if cut.folds else None,
            }
        return entry


def log_data_summary(config, datasets, replicas, resuming):
    """Logs what the run trains on: the images of each role, the replicas, whether it resumes,
    the images left out for want of a label and the majority-vote ties."""
    roles, infos = datasets.roles, datasets.infos
    counts = ", ".join(
        f"{name} {info.num_examples} ({getattr(roles, name)})" for name, info in infos.items()
    )
    logger.info(
        "Training %s on %s: %s; %d replica(s); %s in %s.",
        config.model,
        roles.dataset_name,
        counts,
        replicas,
        "resuming" if resuming else "new run",
        os.path.abspath(config.output_dir),
    )
    for name, info in infos.items():
        if info.dropped:
            logger.info(
                "Left out of the %s data (no usable label), by reason: %s", name, info.dropped
            )
    if sum(info.tied_items for info in infos.values()):
        ties = ", ".join(f"{name} {info.tied_items}" for name, info in infos.items())
        logger.info("Majority-vote ties broken by file name: %s images.", ties)
