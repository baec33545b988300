"""Label orders and the AffectNetC25 remap, checked by name rather than by number."""

import numpy as np
import pytest
from label_expectations import C25_TO_CANONICAL_NAME

from tfds_affectnet import labels


def test_canonical_order():
    assert labels.EXPRESSION_NAMES == (
        "neutral",
        "happy",
        "sad",
        "surprise",
        "fear",
        "disgust",
        "anger",
        "contempt",
    )
    assert labels.expression_names(7) == labels.EXPRESSION_NAMES[:7]
    assert "contempt" not in labels.expression_names(7)
    assert labels.expression_names(11)[8:] == ("none", "uncertain", "no_face")


def test_c25_remap_maps_by_name():
    c25 = np.arange(8)
    mapped = labels.c25_to_affectnet(c25)
    for code, target in zip(c25, mapped):
        c25_name = labels.C25_EXPRESSION_NAMES[code]
        assert labels.EXPRESSION_NAMES[target] == C25_TO_CANONICAL_NAME[c25_name]
    np.testing.assert_array_equal(labels.affectnet_to_c25(mapped), c25)


def test_c25_remap_keeps_missing():
    mapped = labels.c25_to_affectnet(np.array([[7, -1], [0, 6]]))
    np.testing.assert_array_equal(mapped, [[0, -1], [1, 7]])
    mapped = labels.c25_to_affectnet(np.array([7.0, np.nan]))
    np.testing.assert_array_equal(mapped, [0, -1])


@pytest.mark.parametrize("bad", [[8], [-3], [10]])
def test_c25_remap_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="0..7"):
        labels.c25_to_affectnet(bad)


def test_c25_remap_rejects_fractions():
    with pytest.raises(ValueError, match="integer"):
        labels.c25_to_affectnet([1.5])


def test_seven_classes_drops_contempt_only():
    codes, kept = labels.to_seven_classes(np.arange(8))
    np.testing.assert_array_equal(kept, [True] * 7 + [False])
    np.testing.assert_array_equal(codes, [0, 1, 2, 3, 4, 5, 6, -1])


def test_expression_names_rejects_other_counts():
    with pytest.raises(ValueError, match="num_classes=5"):
        labels.expression_names(5)


def test_class_set_of_affectnet_and_of_a_dataset_of_its_own():
    assert labels.class_set() == labels.EXPRESSION_NAMES
    assert labels.class_set(None, 7) == labels.EXPRESSION_NAMES_7
    # AffectNet's 8 in the package's order, in any case, are AffectNet's (7 drops contempt)
    shouted = [name.upper() for name in labels.EXPRESSION_NAMES]
    assert labels.class_set(shouted, 7) == labels.EXPRESSION_NAMES_7
    own = ("calm", "tense", "très tendu")
    assert labels.class_set(own) == own and labels.class_set(list(own), 3) == own
    # the same names in another order are a class set of its own
    reordered = labels.EXPRESSION_NAMES[::-1]
    assert labels.class_set(reordered) == reordered
    with pytest.raises(
        ValueError, match=r"own, 3 classes \(calm, tense, très tendu\), takes num_classes=3 .*=7"
    ):
        labels.class_set(own, 7)
    with pytest.raises(ValueError, match=r"8 classes, or 7 without contempt.*num_classes=5"):
        labels.class_set(None, 5)
    with pytest.raises(ValueError, match=r"two distinct names.*\['a', 'A'\]"):
        labels.class_set(["a", "A"])
