"""The two training examples, as thin wrappers over train(), on the dummy data (compact CNN)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tiny_config, tmp_path, epochs=2, freeze_epochs=1):
    config = tiny_config()
    extra = {
        k: config[k]
        for k in ("stored_image_size", "selection_fraction", "test_fraction", "image_size")
    }
    extra.update(model="compact_cnn", steps_per_epoch=1, strategy="default")
    return argparse.Namespace(
        set="set1",
        data_dir=config["data_dir"],
        manual_dir=None,
        weights="none",
        epochs=epochs,
        freeze_epochs=freeze_epochs,
        batch_size=4,
        learning_rate=1e-3,
        output_dir=str(tmp_path),
        extra=extra,
    )


@pytest.mark.slow
def test_finetune_example(tiny_config, tmp_path):
    module = _load("finetune_resnet50_c25")
    assert module.TASKS == ("exp", "aro", "val")
    results = module.run(_args(tiny_config, tmp_path), tasks=("aro",))
    assert "rmse" in results["aro"]["arousal"]
    assert (tmp_path / "resnet50_mv_aro" / "model.keras").exists()


@pytest.mark.slow
def test_crowd_layer_example(tiny_config, tmp_path):
    module = _load("crowd_layer_c25")
    # one phase: the frozen one is the fine-tuning example's
    args = _args(tiny_config, tmp_path, epochs=1, freeze_epochs=0)
    results = module.run(args, runs=(("exp", "VW+B"),))
    assert "f1_macro" in results["exp_VW+B"]["expression"]
    assert (tmp_path / "resnet50_cv_exp_VW+B" / "annotators.npz").exists()
