"""``make_dataset`` end to end on dummy AffectNet and AffectNetC25 data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from affectnet_tf.data import augment, pipeline, tables
from affectnet_tf.data.images import decode_image, resize_image
from affectnet_tf.data.partition import SUBSETS, Partition, subset_mask
from affectnet_tf.data.targets import build_targets
from affectnet_tf.training.config import RunConfig, data_roles

STORED = 32
# the configurations that the session fixture ``train_data_dir`` prepares
C25 = data_roles(RunConfig(dataset="affectnet_c25/set1", stored_image_size=STORED)).builder_config
EIGHT = data_roles(RunConfig(dataset="affectnet", stored_image_size=STORED)).builder_config


@pytest.fixture
def prepared(train_data_dir):
    """The TFDS folder with dummy ``affectnet_c25`` and ``affectnet`` at 32x32."""
    return train_data_dir


def _c25(prepared, **kwargs):
    kwargs.setdefault("image_size", 24)
    kwargs.setdefault("batch_size", 4)
    return pipeline.make_dataset(
        "affectnet_c25", "set1", config=C25, data_dir=prepared, return_info=True, **kwargs
    )


def _collect(dataset):
    images, targets = [], []
    for x, y in dataset.as_numpy_iterator():
        images.append(x)
        targets.append(y)
    stack = lambda parts: (  # noqa: E731
        {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if isinstance(parts[0], dict)
        else np.concatenate(parts)
    )
    return np.concatenate(images), stack(targets)


def _table_targets(prepared, **kwargs):
    builder = tfds.builder("affectnet_c25", config=C25, data_dir=prepared)
    table = tables.load_label_table(builder, "set1")
    targets, keep, _, _ = build_targets(table, **kwargs)
    return table, targets, keep


@pytest.mark.parametrize(
    "task, target, shape",
    [
        ("exp", "mv", ()),
        ("exp", "soft", (8,)),
        ("exp", "ds", (8,)),
        ("exp", "cv", (25,)),
        ("exp", "original", ()),
        ("aro", "mean", ()),
        ("val", "median", ()),
        ("val", "cv", (25,)),
        ("va", "original", None),
        ("all", "mv", None),
    ],
)
def test_every_task_and_target(prepared, task, target, shape):
    dataset, info = _c25(prepared, task=task, target=target)
    images, targets = _collect(dataset)
    assert images.dtype == np.uint8 and images.shape[1:] == (24, 24, 3)
    assert len(images) == info.num_examples
    assert info.num_annotators == 25
    if shape is None:
        expected_keys = {"valence", "arousal"} | ({"expression"} if task == "all" else set())
        assert set(targets) == expected_keys
        assert all(len(v) == len(images) for v in targets.values())
    else:
        assert targets.shape == (len(images),) + shape
    # Evaluation order is file order: the targets are exactly the table's kept rows.
    table, expected, keep = _table_targets(prepared, task=task, target=target)
    if isinstance(expected, dict):
        for key in expected:
            np.testing.assert_allclose(targets[key], expected[key][keep], equal_nan=True)
    else:
        np.testing.assert_allclose(targets, expected[keep], equal_nan=True)


def test_images_match_the_shared_decode_path(prepared):
    dataset, _ = _c25(prepared, task="exp", target="mv", image_size=STORED)
    images, _ = _collect(dataset)
    builder = tfds.builder("affectnet_c25", config=C25, data_dir=prepared)
    raw = builder.as_dataset(split="set1", decoders={"image": tfds.decode.SkipDecoding()})
    table = tables.load_label_table(builder, "set1")
    by_name = {ex["file_name"]: ex["image"] for ex in raw.as_numpy_iterator()}
    _, _, keep = _table_targets(prepared, task="exp", target="mv")
    for image, name in zip(images, table["file_name"][keep]):
        np.testing.assert_array_equal(image, decode_image(by_name[name]).numpy())
    smaller, _ = _collect(_c25(prepared, task="exp", target="mv", image_size=16)[0])
    first = decode_image(by_name[table["file_name"][keep][0]])
    np.testing.assert_array_equal(smaller[0], resize_image(first, 16).numpy())


def test_training_is_deterministic_with_a_seed(prepared):
    runs = [_collect(_c25(prepared, training=True, seed=3)[0]) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = _collect(_c25(prepared, training=True, seed=4)[0])
    assert not np.array_equal(runs[0][0], other[0])


def test_augmentation_changes_images_but_keeps_targets(prepared):
    plain, plain_targets = _collect(_c25(prepared, training=True, seed=1, augment=False)[0])
    augmented, augmented_targets = _collect(_c25(prepared, training=True, seed=1)[0])
    assert augmented.shape == plain.shape
    np.testing.assert_array_equal(np.sort(plain_targets), np.sort(augmented_targets))
    assert np.abs(augmented.astype(int) - plain.astype(int)).mean() > 1.0


def test_augment_batch_is_stateless_and_geometric():
    images = np.zeros((2, 40, 40, 3), np.uint8)
    images[:, 10:30, 10:30] = 200
    seed = tf.constant([5, 6], tf.int64)
    first = augment.augment_batch(images, seed, 32).numpy()
    second = augment.augment_batch(images, seed, 32).numpy()
    np.testing.assert_array_equal(first, second)
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8
    # The bright square stays roughly in the middle and roughly bright.
    assert first[:, 12:20, 12:20].mean() > 120 and first[:, :3, :3].mean() < 80
    one = augment.augment_image(images[0], seed, 32).numpy()
    assert one.shape == (32, 32, 3)


def test_seven_classes_remove_contempt(prepared):
    dataset, info = _c25(prepared, task="exp", target="mv", num_classes=7)
    _, targets = _collect(dataset)
    assert targets.max() < 7
    assert info.class_names[-1] == "anger" and len(info.class_names) == 7
    assert info.to_dict()["num_classes"] == 7


def test_subsets_partition_the_split(prepared):
    _, info_full = _c25(prepared, task="exp", target="original")
    partition = Partition(selection=0.25, test=0.25, seed=3)
    infos = {
        subset: _c25(prepared, task="exp", target="original", subset=subset, partition=partition)[1]
        for subset in SUBSETS
    }
    names = {subset: set(info.file_names) for subset, info in infos.items()}
    assert names["train"].isdisjoint(names["selection"])
    assert names["train"].isdisjoint(names["test"])
    assert names["selection"].isdisjoint(names["test"])
    assert set.union(*names.values()) == set(info_full.file_names)
    for subset, info in infos.items():
        assert info.subset == subset and info.file_names_sha256 == tables.names_digest(
            names[subset]
        )
    # the cut depends on the partition only, not on the training seed or the target
    again = _c25(prepared, task="exp", target="mv", subset="test", partition=partition, seed=9)
    assert set(again[1].file_names) == names["test"]


def test_subset_mask_is_stratified_and_folds_cover_every_image():
    names = np.array([f"img{i:03d}.jpg".encode() for i in range(200)])
    table = {"file_name": names, "expression": np.repeat([0, 1, 2, 3], [100, 60, 30, 10])}
    partition = Partition(selection=0.1, test=0.2, seed=0)
    masks = {s: subset_mask(table, s, partition) for s in SUBSETS}
    assert sum(m.astype(int) for m in masks.values()).tolist() == [1] * 200
    for label, size in zip(range(4), (100, 60, 30, 10)):
        in_class = table["expression"] == label
        assert abs(masks["test"][in_class].sum() - 0.2 * size) <= 1
        assert abs(masks["selection"][in_class].sum() - 0.1 * size) <= 1
    assert masks["test"].sum() == 40 and masks["selection"].sum() == 20
    # the order of the rows does not matter
    shuffled = np.random.default_rng(1).permutation(200)
    table2 = {k: v[shuffled] for k, v in table.items()}
    np.testing.assert_array_equal(subset_mask(table2, "test", partition), masks["test"][shuffled])
    tests = [subset_mask(table, "test", Partition(folds=4, fold=f)) for f in range(4)]
    assert sum(t.astype(int) for t in tests).tolist() == [1] * 200
    for fold, test in enumerate(tests):
        assert test.sum() == 50
        selection = subset_mask(table, "selection", Partition(folds=4, fold=fold))
        assert not (selection & test).any() and selection.sum() == 15
    with pytest.raises(ValueError, match="no training images"):
        Partition(selection=0.5, test=0.5)
    with pytest.raises(ValueError, match="fold"):
        Partition(folds=3, fold=3)
    with pytest.raises(ValueError, match="subset"):
        subset_mask(table, "validation")


def test_class_weights_and_balanced_sampling(prepared):
    dataset, info = _c25(
        prepared, task="exp", target="mv", training=True, class_balanced=True, seed=0
    )
    counts = np.array(info.class_counts)
    present = counts > 0
    np.testing.assert_allclose(
        np.array(list(info.class_weights.values()))[present] * counts[present],
        counts.sum() / present.sum(),
    )
    seen = np.concatenate([y for _, y in dataset.repeat(20).take(40).as_numpy_iterator()])
    assert set(seen) <= set(np.flatnonzero(present))
    assert len(set(seen)) == present.sum()


def test_single_label_dataset(prepared):
    dataset, info = pipeline.make_dataset(
        "affectnet",
        "train",
        config=EIGHT,
        data_dir=prepared,
        task="va",
        target="original",
        image_size=16,
        batch_size=3,
        return_info=True,
    )
    _, targets = _collect(dataset)
    assert info.num_annotators is None
    assert np.all(np.abs(targets["valence"]) <= 1) and np.all(np.abs(targets["arousal"]) <= 1)
    with pytest.raises(ValueError, match="needs crowd answers"):
        pipeline.make_dataset("affectnet", "train", config=EIGHT, data_dir=prepared, target="cv")


def test_unknown_split_names_the_splits(prepared):
    with pytest.raises(ValueError, match="has no split 'train'.*set1"):
        pipeline.make_dataset("affectnet_c25", "train", config=C25, data_dir=prepared)


def test_name_with_split(prepared):
    with pytest.raises(ValueError, match="Give a split"):
        pipeline.make_dataset("affectnet_c25", config=C25, data_dir=prepared)


def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_one(prepared):
    def batches(epochs):
        dataset, _ = _c25(prepared, training=True, seed=2, epochs=epochs, steps_per_epoch=2)
        assert dataset.cardinality().numpy() == 2 * (epochs[1] - epochs[0])
        return [x for x, _ in dataset.as_numpy_iterator()]

    whole, resumed = batches((0, 3)), batches((1, 3))
    assert len(whole) == 6 and len(resumed) == 4
    for expected, got in zip(whole[2:], resumed):
        np.testing.assert_array_equal(expected, got)
    with pytest.raises(ValueError, match="`epochs` is for training datasets"):
        pipeline.PipelineOptions(epochs=2)


def test_dataset_from_split_with_options_is_make_dataset(prepared):
    split_table = tables.open_split("affectnet_c25/set1", config=C25, data_dir=prepared)
    assert (split_table.name, split_table.split, split_table.num_annotators) == (
        "affectnet_c25",
        "set1",
        25,
    )
    options = pipeline.PipelineOptions(task="all", target="soft", image_size=16, batch_size=5)
    dataset, info = pipeline.dataset_from_split(split_table, options, return_info=True)
    expected, expected_info = pipeline.make_dataset(
        "affectnet_c25/set1",
        config=C25,
        data_dir=prepared,
        task="all",
        target="soft",
        image_size=16,
        batch_size=5,
        return_info=True,
    )
    assert info.to_dict() == expected_info.to_dict()
    assert info.va_target == "mean" and options.resolved_va_target == "mean"
    for got, want in zip(_collect(dataset), _collect(expected)):
        tf.nest.map_structure(np.testing.assert_array_equal, got, want)


def test_padded_batches_hold_missing_markers(prepared):
    dataset, info = _c25(prepared, task="all", target="mv", batch_size=4, pad_to_multiple=3)
    plain, _ = _c25(prepared, task="all", target="mv", batch_size=4)
    sizes = [len(images) for images, _ in plain.as_numpy_iterator()]
    assert sizes == [4, 2] and info.num_examples == 6
    for size, (images, targets) in zip(sizes, dataset.as_numpy_iterator()):
        assert len(images) == 3 * -(-size // 3)  # the next multiple of 3
        np.testing.assert_array_equal(images[size:], 0)
        np.testing.assert_array_equal(targets["expression"][size:], -1)
        assert np.isnan(targets["valence"][size:]).all() and len(targets["valence"]) == len(images)
        assert (targets["expression"][:size] >= 0).all()


def test_label_table_reading_shows_progress(prepared, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.total, self.desc, self.unit, self.count = total, desc, unit, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.count += n

    monkeypatch.setattr(tables, "progress", Bar)
    builder = tfds.builder("affectnet_c25", config=C25, data_dir=prepared)
    table = tables.load_label_table(builder, "set1")
    [bar] = bars
    assert (bar.desc, bar.unit) == ("reading labels of set1", "image")
    assert bar.total == bar.count == len(table["file_name"]) == 6


def test_the_names_that_moved_stay_importable_from_the_pipeline():
    from affectnet_tf.data import targets

    assert pipeline.build_targets is build_targets
    assert pipeline.crowd_answers is targets.crowd_answers
    assert pipeline.Partition is Partition and pipeline.subset_mask is subset_mask
    assert pipeline.load_label_table is tables.load_label_table
    assert pipeline.augment_image is augment.augment_image
    assert tables.split_name("affectnet_c25/set1") == ("affectnet_c25", "set1")
    assert tables.split_name("affectnet_c25", "set2") == ("affectnet_c25", "set2")
