"""Records the reference EmoNet's outputs on seeded weights: ``tests/affectnet_tf/data/``.

Run once, in a virtual environment with PyTorch (CPU) and NumPy, on a checkout of the
reference implementation (github.com/face-analysis/emonet; its code is CC BY-NC-ND 4.0 and is
never copied into this repository)::

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch==2.13.0 numpy
    git clone https://github.com/face-analysis/emonet /tmp/emonet
    /tmp/venv-torch/bin/python tests/make_emonet_fixture.py --emonet-repo /tmp/emonet

For the 5- and 8-class EmoNet it fills every tensor of the reference's state dict from
``numpy.random.default_rng(--weights-seed)`` (the rules of ``tests/emonet_weights.py``; the
published weights are not used), runs the network in eval mode on ``--images`` RGB ``uint8``
images 256x256 drawn from ``--input-seed`` (``emonet_weights.seeded_images``) and scaled to
``[0, 1]`` as the reference's demo does, and writes ``emonet_parity.json``: the seeds, the list of ``(name, shape)`` of the state dict (so the
tests rebuild the weights without PyTorch), the expression logits and probabilities, valence,
arousal, and the 128 features that the last ``Linear`` reads.

It also writes ``tiny_state_dict.pth`` (``torch.save``'s zip format, the state dict wrapped in
``{"epoch": ..., "state_dict": ...}``) and ``tiny_state_dict_legacy.pth`` (the legacy format of
PyTorch before 1.6, a bare state dict): a few small tensors with a ``module.`` prefix, float32,
float16, bfloat16 and int64, one transposed (non-contiguous) and one storage-offset view
sharing its storage; their expected values go into the JSON.
"""

import argparse
import collections
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from emonet_weights import WEIGHT_GAIN, seeded_images, seeded_state_dict  # noqa: E402

DATA = os.path.join(HERE, "affectnet_tf", "data")
IMAGE_SIZE = 256


def _floats(array):
    """Nested lists of float32 values, written with the digits that round-trip float32."""
    return np.asarray(array, np.float32).tolist()


def reference_outputs(EmoNet, torch, n_expression, weights_seed, images):
    """``(tensors, outputs)``: the state dict's ``[(name, shape)]`` and the reference's outputs."""
    net = EmoNet(n_expression=n_expression)
    tensors = [(name, list(value.shape)) for name, value in net.state_dict().items()]
    state = seeded_state_dict(tensors, weights_seed)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    net.eval()
    captured = {}
    final = net.emo_fc_2[3]
    hook = final.register_forward_hook(lambda module, args, out: captured.update(x=args[0]))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        out = net(x)
    hook.remove()
    logits = out["expression"].numpy()
    probabilities = torch.softmax(out["expression"], dim=1).numpy()
    outputs = {
        "n_expression": n_expression,
        "expression_logits": _floats(logits),
        "expression_probabilities": _floats(probabilities),
        "valence": _floats(out["valence"].numpy()),
        "arousal": _floats(out["arousal"].numpy()),
        "features": _floats(captured["x"].numpy()),
    }
    return tensors, outputs


def tiny_state_dict(torch):
    """A few small tensors of the kinds a checkpoint holds, with a ``module.`` prefix."""
    shared = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.25 - 2.0
    state = collections.OrderedDict()
    state["module.conv.weight"] = torch.linspace(-1.0, 1.0, 6, dtype=torch.float32).reshape(
        2, 3, 1, 1
    )
    state["module.bn.running_var"] = torch.tensor([0.5, 1.25, 2.0], dtype=torch.float16)
    state["module.bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    state["module.fc.weight"] = shared.t()  # (6, 4), non-contiguous
    state["module.fc.bias"] = shared[1:3, 2:5]  # a view at storage offset 8
    state["module.scale"] = torch.tensor([1.5, -2.0, 0.15625], dtype=torch.bfloat16)
    return state


def _expected(state, torch):
    expected = {}
    for name, value in state.items():
        array = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        expected[name.removeprefix("module.")] = {
            "dtype": "float32" if value.dtype == torch.bfloat16 else str(array.dtype),
            "shape": list(array.shape),
            "values": array.reshape(-1).tolist(),
        }
    return expected


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emonet-repo", required=True, help="a checkout of face-analysis/emonet")
    parser.add_argument("--output-dir", default=DATA, help=f"(default: {DATA})")
    parser.add_argument("--weights-seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--input-seed", type=int, default=1, help="(default: 1)")
    parser.add_argument("--images", type=int, default=2, help="(default: 2)")
    parser.add_argument(
        "--reference-commit",
        help="the checkout's commit, recorded in the JSON (default: asked from git, if a clone)",
    )
    return parser


def _commit(repo):
    import subprocess

    try:
        result = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch

    sys.path.insert(0, os.path.abspath(args.emonet_repo))
    from emonet.models.emonet import EmoNet

    torch.manual_seed(0)  # the reference initialises before the seeded weights replace it
    images = seeded_images(args.input_seed, args.images, IMAGE_SIZE)
    lists, models = {}, {}
    for n in (8, 5):
        lists[n], models[str(n)] = reference_outputs(EmoNet, torch, n, args.weights_seed, images)
    names_8 = [name for name, _ in lists[8]]
    if names_8 != [name for name, _ in lists[5]]:
        raise SystemExit("the 5- and 8-class state dicts differ in their names")
    changed = {name: shape for (name, shape), (_, s8) in zip(lists[5], lists[8]) if shape != s8}

    os.makedirs(args.output_dir, exist_ok=True)
    tiny = tiny_state_dict(torch)
    torch.save(
        {"epoch": 3, "state_dict": tiny}, os.path.join(args.output_dir, "tiny_state_dict.pth")
    )
    torch.save(
        tiny,
        os.path.join(args.output_dir, "tiny_state_dict_legacy.pth"),
        _use_new_zipfile_serialization=False,
    )
    fixture = {
        "description": "Reference EmoNet outputs on seeded weights; made by "
        "tests/make_emonet_fixture.py (weights: tests/emonet_weights.py).",
        "reference": "github.com/face-analysis/emonet emonet/models/emonet.py",
        "reference_commit": args.reference_commit or _commit(args.emonet_repo),
        "torch_version": torch.__version__,
        "weights_seed": args.weights_seed,
        "input_seed": args.input_seed,
        "input_shape": list(images.shape),
        "input": "uint8 RGB of emonet_weights.seeded_images(input_seed, n), scaled by 1/255",
        "weight_gain": WEIGHT_GAIN,
        "state_dict_8": lists[8],
        "state_dict_5_changes": changed,
        "models": models,
        "tiny_state_dict": _expected(tiny, torch),
    }
    path = os.path.join(args.output_dir, "emonet_parity.json")
    with open(path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"Wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
