"""Benchmarks: crowd layers vs the reference's per-annotator loop, Dawid-Skene vs crowd-kit.

Usage::

    python benchmarks/bench_crowd.py [--quick]

(a) One training step (a ``tf.function``: forward pass, loss and gradients) of a small network
    ``Dense(8) -> softmax -> crowd layer`` with 8 classes and 25, 59 and 1000 annotators.
    ``crowd_layers.CrowdsClassification`` (every connection type) and ``CrowdsConfusion``, with
    ``MaskedMultiCrossEntropy`` on integer answers, against a port of the reference layer
    (github.com/fmpr/CrowdLayer, ``crowd_layer/crowd_layers.py``: ``VW``, ``VB``, ``VW+B`` and
    ``SW`` loop ``for r in range(num_annotators)``, ``MW`` is one ``K.dot``) with the
    reference's masked loss on one-hot answers. ``CrowdsConfusion`` has no reference
    counterpart; it is timed against the reference ``MW`` (one matrix per annotator too).
    A second timing, "layer only", is the crowd layer alone (output summed, gradients to its
    input and weights), without the Dense layer and the loss. Times are the best of several
    blocks of steps (other processes only ever slow a block down).
(b) ``crowd_layers.DawidSkene`` against ``crowdkit.aggregation.DawidSkene`` on a simulated
    sparse crowd (200,000 items, 100 annotators, 8 classes, 5 answers per item), same
    ``max_iter`` and ``tol``. Each runs in its own subprocess on the same data: wall time of
    ``fit`` (and its CPU time), the peak resident memory while fitting (Linux: ``VmHWM``
    reset just before ``fit``; its growth over the RSS before ``fit`` excludes the imports,
    TensorFlow for ours and pandas for crowd-kit), then the peak of memory allocated during a
    second ``fit`` (``tracemalloc``, which sees NumPy, pandas and SciPy buffers).

crowd-kit is not a dependency of the package: ``pip install crowd-kit`` to run (b).
All ratios are measured in the same run, on the same machine.
"""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

NUM_CLASSES = 8
CONN_TYPES = ("MW", "VW", "VB", "VW+B", "SW")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for a smoke test (default: off)"
    )
    parser.add_argument(
        "--skip-layers", action="store_true", help="skip (a), the crowd layers (default: off)"
    )
    parser.add_argument(
        "--skip-ds", action="store_true", help="skip (b), Dawid-Skene (default: off)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="(a) batch size (default: 64)")
    parser.add_argument(
        "--annotators",
        type=int,
        nargs="+",
        default=None,
        help="(a) numbers of annotators (default: 25 59 1000; 59 with --quick)",
    )
    parser.add_argument(
        "--inner-steps",
        type=int,
        default=32,
        help="(a) steps run inside one tf.function call (default: 32)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=100, help="(b) EM iterations (default: 100)"
    )
    parser.add_argument("--tol", type=float, default=1e-5, help="(b) EM tolerance (default: 1e-5)")
    parser.add_argument(
        "--items",
        type=int,
        default=None,
        help="(b) simulated items (default: 200000; 20000 with --quick)",
    )
    parser.add_argument("--ds-worker", choices=("ours", "crowdkit"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# (a) Crowd layers
# --------------------------------------------------------------------------------------------


def reference_layer_class():
    """The reference ``CrowdsClassification`` ported to TF2 / Keras 3, loop included."""
    import keras
    import tensorflow as tf

    def init_identities(shape, dtype=None):
        out = np.zeros(shape)
        for r in range(shape[2]):
            for i in range(shape[0]):
                out[i, i, r] = 1.0
        return tf.constant(out, dtype=dtype)

    class ReferenceCrowdsClassification(keras.layers.Layer):
        def __init__(self, output_dim, num_annotators, conn_type="MW", **kwargs):
            self.output_dim = output_dim
            self.num_annotators = num_annotators
            self.conn_type = conn_type
            super().__init__(**kwargs)

        def build(self, input_shape):
            k, r = self.output_dim, self.num_annotators
            if self.conn_type == "MW":
                self.kernel = self.add_weight(
                    name="CrowdLayer", shape=(k, k, r), initializer=init_identities
                )
            elif self.conn_type == "VW":
                self.kernel = self.add_weight(name="CrowdLayer", shape=(k, r), initializer="ones")
            elif self.conn_type == "VB":
                self.kernel = [
                    self.add_weight(name="CrowdLayer", shape=(k, r), initializer="zeros")
                ]
            elif self.conn_type == "VW+B":
                self.kernel = [
                    self.add_weight(name="CrowdLayer", shape=(k, r), initializer="ones"),
                    self.add_weight(name="CrowdLayer", shape=(k, r), initializer="zeros"),
                ]
            elif self.conn_type == "SW":
                self.kernel = self.add_weight(name="CrowdLayer", shape=(r, 1), initializer="ones")
            else:
                raise Exception("Unknown connection type for CrowdsClassification layer!")

        def call(self, x):
            if self.conn_type == "MW":
                res = tf.tensordot(x, self.kernel, axes=[[1], [0]])  # K.dot(x, self.kernel)
            else:
                out = []
                for r in range(self.num_annotators):
                    if self.conn_type == "VW":
                        out.append(x * self.kernel[:, r])
                    elif self.conn_type == "VB":
                        out.append(x + self.kernel[0][:, r])
                    elif self.conn_type == "VW+B":
                        out.append(x * self.kernel[0][:, r] + self.kernel[1][:, r])
                    elif self.conn_type == "SW":
                        out.append(x * self.kernel[r, 0])
                res = tf.stack(out)
                if len(res.shape) == 3:
                    res = tf.transpose(res, [1, 2, 0])
                elif len(res.shape) == 4:
                    res = tf.transpose(res, [1, 2, 3, 0])
                else:
                    raise Exception("Wrong number of dimensions for output")
            return res

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.output_dim, self.num_annotators)

    return ReferenceCrowdsClassification


def reference_loss(y_true, y_pred):
    """The reference ``MaskedMultiCrossEntropy.loss``, averaged as Keras did."""
    import tensorflow as tf

    vec = tf.nn.softmax_cross_entropy_with_logits(logits=y_pred, labels=y_true, axis=1)
    mask = tf.equal(y_true[:, 0, :], -1)
    return tf.reduce_mean(tf.where(mask, tf.zeros_like(vec), vec))


def make_train_step(crowd_layer, loss_fn, num_features, inner=1):
    """A ``tf.function`` of ``inner`` steps: ``Dense -> softmax -> crowd layer``, loss, gradients.

    Several steps per call (like Keras' ``steps_per_execution``) keep the per-call Python
    dispatch, the same for both sides, from hiding the cost of the layers themselves; each
    step's input is perturbed by its index so no step can be hoisted out of the loop.
    """
    import keras
    import tensorflow as tf

    dense = keras.layers.Dense(NUM_CLASSES)
    dense.build((None, num_features))
    if not crowd_layer.built:
        crowd_layer.build((None, NUM_CLASSES))
    variables = list(dense.trainable_variables) + list(crowd_layer.trainable_variables)

    @tf.function
    def step(x, y):
        total = tf.constant(0.0)
        for i in tf.range(inner):
            with tf.GradientTape() as tape:
                xi = x * (1.0 + 1e-6 * tf.cast(i, tf.float32))
                loss = loss_fn(y, crowd_layer(tf.nn.softmax(dense(xi))))
            grads = tape.gradient(loss, variables)
            total += loss + tf.add_n([tf.reduce_sum(g) for g in grads]) * 0.0
        return total, inner

    return step


def make_layer_step(crowd_layer, inner=1):
    """``inner`` forward+backward passes of the crowd layer alone in one ``tf.function``.

    The layer's output is summed; gradients go to its input and weights.
    """
    import tensorflow as tf

    if not crowd_layer.built:
        crowd_layer.build((None, NUM_CLASSES))
    variables = list(crowd_layer.trainable_variables)

    @tf.function
    def step(probabilities, _):
        total = tf.constant(0.0)
        for i in tf.range(inner):
            with tf.GradientTape() as tape:
                p = probabilities * (1.0 + 1e-6 * tf.cast(i, tf.float32))
                tape.watch(p)
                loss = tf.reduce_sum(crowd_layer(p))
            grads = tape.gradient(loss, [p, *variables])
            total += loss + tf.add_n([tf.reduce_sum(g) for g in grads]) * 0.0
        return total, inner

    return step


def time_step(step, x, y, repeats, block_seconds):
    """Best milliseconds per step over ``repeats`` blocks, and the first call's seconds.

    The best block, not the median: other processes only ever slow a block down.
    """
    start = time.perf_counter()
    inner = step(x, y)[1]  # traces; steps per call
    inner = int(inner.numpy()) if hasattr(inner, "numpy") else int(inner)
    trace_seconds = time.perf_counter() - start
    step(x, y)[0].numpy()
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            loss = step(x, y)[0]
        loss.numpy()
        if time.perf_counter() - start >= block_seconds or n >= 4096:
            break
        n *= 2
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            loss = step(x, y)[0]
        loss.numpy()
        times.append((time.perf_counter() - start) / (n * inner))
    return 1000.0 * min(times), trace_seconds


def bench_layers(args):
    import tensorflow as tf

    import crowd_layers

    reference_cls = reference_layer_class()
    annotator_counts = args.annotators or ((59,) if args.quick else (25, 59, 1000))
    repeats, block = (3, 0.02) if args.quick else (7, 0.2)
    num_features = 64
    rng = np.random.default_rng(0)
    rows = []
    print(
        f"(a) training step (forward + loss + gradients), {args.inner_steps} steps per "
        f"tf.function call, batch {args.batch_size}, "
        f"{NUM_CLASSES} classes, Dense({NUM_CLASSES}) -> softmax -> crowd layer -> masked "
        f"cross-entropy; best of {repeats} blocks; TF {tf.__version__}, "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads"
    )
    print(
        "'layer only': the crowd layer alone (output summed; gradients to its input and "
        "weights), no Dense, no loss."
    )
    header = (
        f"{'annotators':>10}  {'ours':<28} {'reference':<18} {'ours ms':>8} {'ref ms':>8} "
        f"{'speedup':>8} | {'layer only: ours ms':>19} {'ref ms':>8} {'speedup':>8} "
        f"{'ref trace s':>11}"
    )
    print(header)
    print("-" * len(header))
    for num_annotators in annotator_counts:
        x = tf.constant(rng.normal(size=(args.batch_size, num_features)), tf.float32)
        probs = tf.nn.softmax(
            tf.constant(rng.normal(size=(args.batch_size, NUM_CLASSES)), tf.float32)
        )
        answers = rng.integers(0, NUM_CLASSES, size=(args.batch_size, num_annotators))
        answers[rng.random(answers.shape) < 0.5] = -1
        answers[:, 0] = rng.integers(0, NUM_CLASSES, size=args.batch_size)
        y_int = tf.constant(answers, tf.int32)
        one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[answers].transpose(0, 2, 1)
        one_hot[np.broadcast_to((answers == -1)[:, None, :], one_hot.shape)] = -1.0
        y_one_hot = tf.constant(one_hot)
        cases = [
            (
                f"CrowdsClassification {conn}",
                crowd_layers.CrowdsClassification(NUM_CLASSES, num_annotators, conn_type=conn),
                f"loop {conn}" if conn != "MW" else "MW (K.dot)",
                reference_cls(NUM_CLASSES, num_annotators, conn_type=conn),
            )
            for conn in CONN_TYPES
        ]
        cases.append(
            (
                "CrowdsConfusion",
                crowd_layers.CrowdsConfusion(NUM_CLASSES, num_annotators),
                "MW (K.dot)",
                reference_cls(NUM_CLASSES, num_annotators, conn_type="MW"),
            )
        )
        for ours_name, ours_layer, ref_name, ref_layer in cases:
            inner = args.inner_steps
            ours_step = make_train_step(
                ours_layer, crowd_layers.MaskedMultiCrossEntropy(), num_features, inner
            )
            ref_step = make_train_step(ref_layer, reference_loss, num_features, inner)
            ours_ms, _ = time_step(ours_step, x, y_int, repeats, block)
            ref_ms, ref_trace = time_step(ref_step, x, y_one_hot, repeats, block)
            ours_layer_ms, _ = time_step(
                make_layer_step(ours_layer, inner), probs, None, repeats, block
            )
            ref_layer_ms, _ = time_step(
                make_layer_step(ref_layer, inner), probs, None, repeats, block
            )
            speedup = ref_ms / ours_ms
            rows.append((num_annotators, ours_name, speedup, ref_layer_ms / ours_layer_ms))
            print(
                f"{num_annotators:>10}  {ours_name:<28} {ref_name:<18} {ours_ms:>8.3f} "
                f"{ref_ms:>8.3f} {speedup:>7.1f}x | {ours_layer_ms:>19.3f} {ref_layer_ms:>8.3f} "
                f"{ref_layer_ms / ours_layer_ms:>7.1f}x {ref_trace:>11.1f}",
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------------------------
# (b) Dawid-Skene
# --------------------------------------------------------------------------------------------


def simulate_crowd(n_items, n_annotators, num_classes, answers_per_item, seed=0):
    """Long-format answers of a sparse simulated crowd with Dawid-Skene confusions, and truth."""
    rng = np.random.default_rng(seed)
    priors = rng.dirichlet(np.full(num_classes, 5.0))
    accuracy = rng.uniform(0.35, 0.9, n_annotators)
    confusions = rng.dirichlet(np.ones(num_classes), size=(n_annotators, num_classes))
    confusions *= (1.0 - accuracy)[:, None, None]
    confusions[:, np.arange(num_classes), np.arange(num_classes)] += accuracy[:, None]
    confusions /= confusions.sum(-1, keepdims=True)
    truth = rng.choice(num_classes, n_items, p=priors)
    chunks = []
    for start in range(0, n_items, 20_000):  # distinct annotators per item, in chunks
        size = min(20_000, n_items - start)
        keys = rng.random((size, n_annotators))
        chunks.append(np.argpartition(keys, answers_per_item, axis=1)[:, :answers_per_item])
    annotators = np.concatenate(chunks).ravel()
    items = np.repeat(np.arange(n_items), answers_per_item)
    cumulative = confusions.cumsum(-1)[annotators, truth[items]]
    labels = (rng.random(len(items))[:, None] > cumulative).sum(1).clip(max=num_classes - 1)
    return items, annotators, labels, truth


def _rss_bytes():
    """Current resident set size (Linux ``/proc``), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _reset_peak_rss():
    """Resets the kernel's peak-RSS mark of this process (Linux >= 4.0); True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes():
    """Peak RSS since the last reset (``VmHWM``), else ``ru_maxrss`` (which counts the imports)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def ds_worker(args):
    """Runs one implementation on the saved crowd (in its own process) and writes a JSON line."""
    warnings.filterwarnings("ignore")
    data = np.load(args.data)
    items, annotators, labels = data["items"], data["annotators"], data["labels"]
    n_items = int(items.max()) + 1
    if args.ds_worker == "ours":
        from crowd_layers import DawidSkene

        answers = (items, annotators, labels)

        def fit():
            model = DawidSkene(max_iter=args.max_iter, tol=args.tol).fit(answers)
            return model.labels_, model.n_iter_

    else:
        import pandas as pd
        from crowdkit.aggregation import DawidSkene

        answers = pd.DataFrame({"task": items, "worker": annotators, "label": labels})

        def fit():
            model = DawidSkene(n_iter=args.max_iter, tol=args.tol).fit(answers)
            return model.labels_.reindex(np.arange(n_items)).to_numpy(), len(model.loss_history_)

    gc.collect()
    rss_before = _rss_bytes()
    peak_was_reset = _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    fitted_labels, n_iter = fit()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_rss = _peak_rss_bytes()
    del fitted_labels
    gc.collect()
    tracemalloc.start()
    fitted_labels, _ = fit()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.save(args.out, np.asarray(fitted_labels, dtype=np.int64))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "n_iter": n_iter,
                "traced_peak": traced_peak,
                "rss_before_fit": rss_before,
                "peak_rss": peak_rss,
                "peak_was_reset": peak_was_reset,
            }
        )
    )


def bench_dawid_skene(args):
    try:
        import crowdkit  # noqa: F401
    except ImportError:
        print("(b) skipped: crowd-kit is not installed. Run `pip install crowd-kit` to compare.")
        return None
    n_items, n_annotators, per_item = (20_000, 50, 5) if args.quick else (200_000, 100, 5)
    n_items = args.items or n_items
    items, annotators, labels, truth = simulate_crowd(n_items, n_annotators, NUM_CLASSES, per_item)
    print(
        f"\n(b) Dawid-Skene on a simulated sparse crowd: {n_items:,} items x {n_annotators} "
        f"annotators x {NUM_CLASSES} classes, {per_item} answers per item ({len(items):,} "
        f"answers); max_iter={args.max_iter}, tol={args.tol}; each in its own process"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "crowd.npz"
        np.savez(data_path, items=items, annotators=annotators, labels=labels)
        for name in ("ours", "crowdkit"):
            out_path = Path(tmp) / f"{name}.npy"
            command = [
                sys.executable,
                __file__,
                "--ds-worker",
                name,
                "--data",
                str(data_path),
                "--out",
                str(out_path),
                "--max-iter",
                str(args.max_iter),
                "--tol",
                str(args.tol),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{name} worker failed:\n{done.stdout}\n{done.stderr}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            results[name]["labels"] = np.load(out_path)
    ours, ck = results["ours"], results["crowdkit"]
    mib = 1024.0**2
    print(
        "traced peak: most memory allocated at once during fit (tracemalloc, a second fit); "
        "peak RSS in fit: the process's peak RSS while fitting (VmHWM reset just before); "
        "RSS growth: peak RSS in fit - RSS before fit"
    )
    header = (
        f"{'implementation':<32} {'fit s':>7} {'CPU s':>7} {'iters':>5} {'acc. vs truth':>13} "
        f"{'traced peak MiB':>15} {'RSS before fit MiB':>18} {'peak RSS in fit MiB':>19} "
        f"{'RSS growth MiB':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, result in (
        ("crowd_layers.DawidSkene", ours),
        ("crowdkit.aggregation.DawidSkene", ck),
    ):
        before = result["rss_before_fit"]
        growth = "n/a" if before is None else f"{(result['peak_rss'] - before) / mib:.1f}"
        before = "n/a" if before is None else f"{before / mib:.1f}"
        peak = f"{result['peak_rss'] / mib:.1f}" + ("" if result["peak_was_reset"] else "*")
        print(
            f"{name:<32} {result['seconds']:>7.3f} {result['cpu_seconds']:>7.3f} {result['n_iter']:>5} "
            f"{np.mean(result['labels'] == truth):>13.4f} {result['traced_peak'] / mib:>15.1f} "
            f"{before:>18} {peak:>19} {growth:>14}"
        )
    if not (ours["peak_was_reset"] and ck["peak_was_reset"]):
        print("* peak RSS since the process started (imports included): no /proc/self/clear_refs")
    speedup = ck["seconds"] / ours["seconds"]
    agreement = float(np.mean(ours["labels"] == ck["labels"]))
    memory_ratio = ck["traced_peak"] / ours["traced_peak"]
    cpu_speedup = ck["cpu_seconds"] / ours["cpu_seconds"]
    print(
        f"speedup {speedup:.1f}x (wall), {cpu_speedup:.1f}x (CPU time); "
        f"label agreement {100 * agreement:.3f}%, "
        f"traced peak memory ratio (crowd-kit / ours) {memory_ratio:.1f}x"
    )
    return speedup, agreement


def main(argv=None):
    args = parse_args(argv)
    if args.ds_worker:
        ds_worker(args)
        return 0
    print(f"bench_crowd.py{' --quick' if args.quick else ''}: {os.cpu_count()} CPUs\n")
    checks = []
    if not args.skip_layers:
        rows = bench_layers(args)
        for num_annotators, name, _, layer_speedup in rows:
            if num_annotators >= 59 and name.endswith((" VW", " VW+B")):
                checks.append(
                    (
                        f"{name} forward+backward at {num_annotators} annotators >= 5x",
                        layer_speedup >= 5.0,
                    )
                )
    if not args.skip_ds:
        result = bench_dawid_skene(args)
        if result is not None:
            speedup, agreement = result
            checks.append(("DawidSkene >= 10x faster than crowd-kit", speedup >= 10.0))
            checks.append(("DawidSkene labels >= 99% equal to crowd-kit's", agreement >= 0.99))
    if checks:
        print("\nTargets" + (" (--quick sizes: indicative only)" if args.quick else ""))
        for text, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
