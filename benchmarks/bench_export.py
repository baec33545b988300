"""File size, CPU latency (batch 1) and throughput (batch 32) of every export format.

One run measures, on the same images: the Keras model (``model(x, training=False)`` in a
``tf.function``), the SavedModel (its ``images`` signature, loaded with
``tf.saved_model.load``), TFLite float32, float16 and int8 in the LiteRT interpreter
(``ai_edge_litert``, all CPU threads, XNNPACK) and ONNX in onnxruntime (CPU provider, default
threads). Each path runs a few warm-up calls, then latency is the median of ``--repeats`` calls
on one image and throughput is images per second over ``--repeats`` batches of 32.

The model: ``--model-dir RUN`` (a trained run: int8 calibrated on its training images, the
agreement columns on its selection images), or ``--backbone NAME`` built with random weights at
its default size (``--image-size`` to change; int8 calibrated on random images, so only sizes and
speeds mean something). Images are seeded uniform noise for timing (``--seed``).

Usage::

    python benchmarks/bench_export.py [--backbone efficientnet_b0 | --model-dir RUN]
        [--image-size 224] [--repeats 20] [--quick] [--output FILE.json]
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from affectnet_tf.deploy.export import onnx as onnx_export  # noqa: E402
from affectnet_tf.deploy.export import parity, savedmodel, tflite  # noqa: E402
from affectnet_tf.deploy.export.check_data import check_images  # noqa: E402
from affectnet_tf.deploy.export.model import load_export_model, run_keras  # noqa: E402
from affectnet_tf.deploy.export.run_export import file_size  # noqa: E402
from affectnet_tf.modeling import models  # noqa: E402


def _timed(function, batch, repeats, warmup=3):
    for _ in range(warmup):
        function(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(batch)
        times.append(time.perf_counter() - start)
    return times


def _keras_runner(model):
    call = tf.function(lambda x: model(x, training=False))
    return lambda batch: tf.nest.map_structure(np.asarray, call(tf.constant(batch)))


def _saved_model_runner(path):
    signature = tf.saved_model.load(path).signatures["images"]
    return lambda batch: {k: v.numpy() for k, v in signature(images=tf.constant(batch)).items()}


def _tflite_runner(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")
    return lambda batch: runner(image=np.ascontiguousarray(batch))


def _onnx_runner(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def measure(model, folder, repeats, seed=0, calibration=None, check=None):
    """``[{path, bytes, latency_ms, images_per_s, top1_agreement}]`` for every format."""
    size = int(models.model_metadata(model)["image_size"])
    rng = np.random.default_rng(seed)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    if calibration is None:
        calibration = rng.integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    keras_path = os.path.join(folder, "model.keras")
    model.save(keras_path)
    paths = {"keras": keras_path}
    paths["saved_model"] = savedmodel.export_saved_model(model, os.path.join(folder, "saved_model"))
    for quantization in tflite.QUANTIZATIONS:
        paths[f"tflite_{quantization}"] = tflite.export_tflite(
            model, os.path.join(folder, f"model_{quantization}.tflite"), quantization, calibration
        )
    paths["onnx"] = onnx_export.export_onnx(model, os.path.join(folder, "model.onnx"))
    runners = {
        "keras": lambda: _keras_runner(model),
        "saved_model": lambda: _saved_model_runner(paths["saved_model"]),
        "onnx": lambda: _onnx_runner(paths["onnx"]),
        **{
            f"tflite_{q}": (lambda q=q: _tflite_runner(paths[f"tflite_{q}"]))
            for q in tflite.QUANTIZATIONS
        },
    }
    reference = run_keras(model, check) if check is not None else None
    results = []
    for name in ("keras", "saved_model", *(f"tflite_{q}" for q in tflite.QUANTIZATIONS), "onnx"):
        run = runners[name]()
        latency = statistics.median(_timed(run, one, repeats))
        throughput = len(batch) * repeats / sum(_timed(run, batch, repeats, warmup=1))
        row = {
            "format": name,
            "bytes": file_size(paths[name]),
            "latency_ms": latency * 1000,
            "images_per_s": throughput,
            "top1_agreement": None,
        }
        if reference is not None and "expression" in reference and name != "keras":
            runner = {
                "saved_model": lambda p: savedmodel.run_saved_model(p, check),
                "onnx": lambda p: onnx_export.run_onnx(p, check),
            }.get(name, lambda p: tflite.run_tflite(p, check))
            comparison = parity.compare_outputs(reference, runner(paths[name]))
            row["top1_agreement"] = comparison["expression"]["top1_agreement"]
        results.append(row)
        print(
            f"{name:16s} {row['bytes'] / 1e6:8.2f} MB {row['latency_ms']:9.2f} ms "
            f"{row['images_per_s']:9.1f} img/s"
            + (
                f"   top-1 agreement {row['top1_agreement']:.2%}"
                if row["top1_agreement"] is not None
                else ""
            ),
            flush=True,
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--model-dir", help="a trained run folder (instead of --backbone)")
    parser.add_argument("--image-size", type=int, help="input side (default: the backbone's)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="compact_cnn_small at 64, 3 repeats")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.image_size, args.repeats = "compact_cnn_small", 64, 3
    calibration = check = None
    if args.model_dir:
        model = load_export_model(args.model_dir)
        size = int(models.model_metadata(model)["image_size"])
        calibration = check_images(args.model_dir, "train", 200, size)
        check = check_images(args.model_dir, "selection", 200, size)
        source = f"run {args.model_dir}"
    else:
        model = models.build_model(
            args.backbone, task="all", weights=None, image_size=args.image_size
        ).prediction_model
        source = f"{args.backbone}, random weights"
    size = int(models.model_metadata(model)["image_size"])
    print(
        f"Model: {source}, {size}x{size}, heads {models.model_metadata(model)['outputs']}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}; latency: median of {args.repeats} calls at batch 1; "
        f"throughput: {args.repeats} batches of 32"
    )
    print(f"{'format':16s} {'size':>11s} {'latency':>12s} {'throughput':>15s}")
    with tempfile.TemporaryDirectory(prefix="bench_export_") as folder:
        results = measure(model, folder, args.repeats, args.seed, calibration, check)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            json.dump({"model": source, "image_size": size, "results": results}, stream, indent=2)
    return results


if __name__ == "__main__":
    main()
