"""Makes the HSEmotion parity fixtures of ``tests/affectnet_tf/test_hsemotion.py``.

Runs only in a separate environment with PyTorch and timm, never the package's (PyTorch is no
dependency of the package, its tests or CI)::

    python3 -m venv /tmp/venv-hse
    /tmp/venv-hse/bin/pip install torch==2.14.1 torchvision==0.29.1 timm onnx onnxruntime numpy
    /tmp/venv-hse/bin/python tests/make_hsemotion_fixture.py [--output-dir DIR]

For each variant (EfficientNet-B0 with 8 classes, 7 classes and the 8 + valence/arousal
multitask head, EfficientNet-B2 with 8 classes) it:

1. builds the model as HSEmotion's training notebooks did (``src/affectnet/
   train_emotions-pytorch.ipynb`` of github.com/av-savchenko/face-emotion-recognition): timm's
   ``tf_efficientnet_b0_ns`` / ``tf_efficientnet_b2_ns`` with the classifier replaced by
   ``nn.Sequential(nn.Linear(features, K))``, or ``nn.Linear(features, K + 2)`` for the
   multitask model, and fills it with seeded random weights;
2. exports it as their ``src/convert_pt_to_onnx.py`` did (``torch.onnx.export``, opset 11,
   constant folding, so BatchNorm folded into the convolutions, input ``input``, output
   ``output``, dynamic batch) and checks onnxruntime against PyTorch on it;
3. replaces the graph's weights by :func:`hsemotion_weights.fill_initializers` draws (the
   torch-free rule that the tests use), with each weight's standard deviation calibrated in
   graph order so that every layer's output has unit spread on the fixture images (LSUV-like;
   uniform scales would either fade the input out or blow up within 80 layers) and the logits
   a spread of 1;
4. loads those weights back into the timm model (each folded convolution with an identity
   BatchNorm: scale 1, shift the folded bias, mean 0, variance ``1 - eps``) and checks that
   onnxruntime and PyTorch agree on the fixture images, so the graph run by the tests is the
   timm model;
5. records onnxruntime's outputs on the fixture images (preprocessed as HSEmotion does) and
   writes the graph without its weights (``<variant>.onnx``, a few hundred KB) and, for all
   variants, ``hsemotion_fixture.json`` (seeds, standard deviations, input seed and shape,
   reference outputs, check figures, versions).
"""

import argparse
import copy
import io
import json
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hsemotion_weights as hw  # noqa: E402

OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "affectnet_tf", "data")
OUTPUT_DIR = os.path.join(OUTPUT_DIR, "hsemotion")

VARIANTS = {
    "b0_8": {"arch": "tf_efficientnet_b0_ns", "classes": 8, "multitask": False, "size": 224},
    "b0_7": {"arch": "tf_efficientnet_b0_ns", "classes": 7, "multitask": False, "size": 224},
    "b0_8_va_mtl": {"arch": "tf_efficientnet_b0_ns", "classes": 8, "multitask": True, "size": 224},
    "b2_8": {"arch": "tf_efficientnet_b2_ns", "classes": 8, "multitask": False, "size": 260},
}
TORCH_SEED = 7  # the weights of the exported model (replaced before the fixture is recorded)
NUM_IMAGES = 2
LOGIT_STD = 1.0


def build_model(arch, classes, multitask, seed):
    """timm's model with HSEmotion's classifier, filled with seeded random weights."""
    model = timm.create_model(arch, pretrained=False)
    features = model.num_features
    if multitask:
        model.classifier = torch.nn.Linear(in_features=features, out_features=classes + 2)
    else:
        model.classifier = torch.nn.Sequential(
            torch.nn.Linear(in_features=features, out_features=classes)
        )
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            shape = tuple(tensor.shape)
            if name.endswith("running_var") or (name.endswith("weight") and len(shape) == 1):
                values = rng.uniform(0.5, 1.5, shape)
            elif name.endswith("weight"):
                values = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
            else:
                values = rng.standard_normal(shape) * 0.1
            tensor.copy_(torch.from_numpy(values.astype(np.float32)))
    return model.eval()


def export(model, size):
    """The ONNX graph, exported with the settings of HSEmotion's convert_pt_to_onnx.py."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.randn(1, 3, size, size),
            buffer,
            opset_version=11,
            do_constant_folding=True,
            export_params=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
            dynamo=False,  # the TorchScript exporter that HSEmotion used (opset 11)
        )
    return onnx.load_from_string(buffer.getvalue())


def run(model, x, outputs=None):
    model = copy.deepcopy(model)
    for name in outputs or []:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def calibrate(skeleton, seed, x):
    """Standard deviations of the weights so that each layer's output (bias excluded) has
    unit spread on ``x``, in graph order, the logits ``LOGIT_STD``."""
    stds = hw.default_stds(skeleton)
    layers = [n for n in skeleton.graph.node if n.op_type in ("Conv", "Gemm")]
    for node in layers:
        model = hw.fill_initializers(copy.deepcopy(skeleton), seed, stds)
        initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        output = run(model, x, [node.output[0]])[-1]
        if len(node.input) > 2:
            bias = initializers[node.input[2]]
            output = output - (bias.reshape(1, -1, 1, 1) if output.ndim == 4 else bias)
        target = LOGIT_STD if node.op_type == "Gemm" else 1.0
        stds[node.input[1]] *= target / float(output.std())
    return stds


def _module_path(node_name):
    """``/blocks/blocks.1/blocks.1.0/se/conv_reduce/Conv`` -> ``blocks.1.0.se.conv_reduce``."""
    parts = node_name.strip("/").split("/")[:-1]
    dotted = [i for i, p in enumerate(parts) if "." in p]
    if not dotted:
        return ".".join(parts)
    return ".".join([parts[dotted[-1]], *parts[dotted[-1] + 1 :]])


def load_into_torch(model, onnx_model):
    """The ONNX graph's weights into the timm model; folded BatchNorm as identity."""
    weights = {
        i.name: np.array(onnx.numpy_helper.to_array(i)) for i in onnx_model.graph.initializer
    }
    modules = dict(model.named_modules())
    batch_norms, last_conv = {}, None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            last_conv = name
        elif isinstance(module, torch.nn.BatchNorm2d):
            batch_norms[last_conv] = module
    with torch.no_grad():
        for node in onnx_model.graph.node:
            if node.op_type not in ("Conv", "Gemm"):
                continue
            module = modules[_module_path(node.name)]
            module.weight.copy_(torch.from_numpy(weights[node.input[1]]))
            bias = torch.from_numpy(weights[node.input[2]])
            if module.bias is not None:
                module.bias.copy_(bias)
                continue
            bn = batch_norms[_module_path(node.name)]
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return model.eval()


def make_variant(key, spec, weights_seed, input_seed, output_dir):
    size = spec["size"]
    model = build_model(spec["arch"], spec["classes"], spec["multitask"], TORCH_SEED)
    exported = export(model, size)
    check = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        torch_out = model(torch.from_numpy(check)).numpy()
    export_diff = float(np.abs(run(exported, check)[0] - torch_out).max() / np.abs(torch_out).max())

    skeleton = copy.deepcopy(exported)
    stripped = hw.strip_initializers(skeleton)
    images = hw.random_images(input_seed, (NUM_IMAGES, size, size, 3))
    x = hw.reference_preprocess(images)
    stds = calibrate(skeleton, weights_seed, x)
    filled = hw.fill_initializers(copy.deepcopy(skeleton), weights_seed, stds)
    reference = run(filled, x)[0]
    with torch.no_grad():
        torch_ref = load_into_torch(model, filled)(torch.from_numpy(x)).numpy()
    torch_diff = float(np.abs(reference - torch_ref).max())

    path = os.path.join(output_dir, f"{key}.onnx")
    onnx.save(skeleton, path)
    print(
        f"{key}: {len(stripped)} weights stripped, skeleton {os.path.getsize(path) / 1e3:.0f} KB, "
        f"export check (relative) {export_diff:.2e}, torch vs onnxruntime {torch_diff:.2e}, "
        f"logits {np.round(reference[:, : spec['classes']], 3).tolist()}"
    )
    if export_diff > 1e-4 or torch_diff > 1e-4:
        raise SystemExit(f"{key}: the exported graph does not match PyTorch")
    return {
        "skeleton": os.path.basename(path),
        "architecture": spec["arch"],
        "classifier": (
            f"Linear({model.num_features}, {spec['classes'] + 2})"
            if spec["multitask"]
            else f"Sequential(Linear({model.num_features}, {spec['classes']}))"
        ),
        "num_classes": spec["classes"],
        "multitask": spec["multitask"],
        "image_size": size,
        "weights_seed": weights_seed,
        "weights_std": {name: stds[name] for name in stripped if name in stds},
        "input_seed": input_seed,
        "input_shape": [NUM_IMAGES, size, size, 3],
        "reference_outputs": reference.astype(np.float64).tolist(),
        "checks": {
            "export_vs_torch_relative": export_diff,
            "refilled_vs_torch_max_abs": torch_diff,
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=OUTPUT_DIR, help=f"(default: {OUTPUT_DIR})")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    torch.manual_seed(0)
    fixture = {
        "made_by": "tests/make_hsemotion_fixture.py",
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "export": {
            "opset_version": 11,
            "do_constant_folding": True,
            "input_names": ["input"],
            "output_names": ["output"],
            "dynamic_axes": {"input": {"0": "batch_size"}, "output": {"0": "batch_size"}},
        },
        "fill": {
            "module": "tests/hsemotion_weights.py",
            "bias_std": hw.BIAS_STD,
            "bn_range": hw.BN_RANGE,
            "logit_std": LOGIT_STD,
        },
        "preprocessing": "x / 255, (x - mean) / std per channel (ImageNet), channels first",
        "variants": {},
    }
    for i, (key, spec) in enumerate(VARIANTS.items()):
        fixture["variants"][key] = make_variant(key, spec, 100 + i, 200 + i, args.output_dir)
    with open(os.path.join(args.output_dir, "hsemotion_fixture.json"), "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
