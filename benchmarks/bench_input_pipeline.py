"""Images per second of ``make_dataset`` against a plain Python loop and the JPEG decode limit.

All three are measured in one run on the same generated records: ``N`` face-like JPEG images
of 256x256 are written in the layout of AffectNet's 8-label release, the ``affectnet`` builder
prepares them (224x224 JPEG records), and then

* ``make_dataset``: ``affectnet/emotions8``, ``training=True`` (shuffle, random resized crop,
  flip, rotation, colour jitter), 224x224, batch 64, iterated to the end;
* the loop: the same records, read one by one in Python (``tfds`` with the image left
  encoded, ``as_numpy_iterator``), then ``cv2.imdecode``, BGR->RGB, ``cv2.resize`` to 224,
  NumPy batch of 64; also timed on the encoded images held in a Python list beforehand (no
  reading: the loop's upper bound);
* the decode limit: ``tf.io.decode_jpeg`` and ``tf.io.decode_image`` alone on the same
  records in a parallel ``tf.data`` map, batched; the faster of the two is the limit.

Targets: ``make_dataset`` at least 5x the loop and at least 70% of the decode limit.

Usage::

    python benchmarks/bench_input_pipeline.py [--images 2048] [--epochs 3] [--quick]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from affectnet_tf.data.pipeline import make_dataset  # noqa: E402

BATCH = 64
SIZE = 224


def write_eight_label_release(root, num_images, seed=0, size=256):
    """N face-like JPEGs with annotations (numpy strings) in the 8-label release's layout."""
    rng = np.random.default_rng(seed)
    for folder, count in (
        ("train_set", num_images),
        ("val_set", 8),
    ):
        images = Path(root, folder, "images")
        annotations = Path(root, folder, "annotations")
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for number in range(count):
            image = np.full((size, size, 3), rng.integers(40, 200, 3), np.uint8)
            noise = rng.normal(0, 12, (size, size, 3))
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
            centre = (int(rng.integers(100, 156)), int(rng.integers(100, 156)))
            skin = tuple(int(v) for v in rng.integers(90, 240, 3))
            cv2.ellipse(image, centre, (70, 90), 0, 0, 360, skin, -1)
            for dx in (-28, 28):
                cv2.circle(image, (centre[0] + dx, centre[1] - 20), 8, (30, 30, 30), -1)
            cv2.ellipse(image, (centre[0], centre[1] + 35), (30, 12), 0, 0, 180, (60, 20, 20), 3)
            cv2.imwrite(str(images / f"{number}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            label = number % 8
            np.save(annotations / f"{number}_exp.npy", np.array(str(label)))
            np.save(annotations / f"{number}_val.npy", np.array(f"{rng.uniform(-1, 1):.6f}"))
            np.save(annotations / f"{number}_aro.npy", np.array(f"{rng.uniform(-1, 1):.6f}"))
            landmarks = rng.uniform(0, size, 136)
            np.save(
                annotations / f"{number}_lnd.npy", np.array(";".join(f"{v:.2f}" for v in landmarks))
            )


def images_per_second(iterator_factory, epochs):
    """One warm-up pass, then the best of ``epochs`` timed passes, in images per second.

    The best pass, not the mean: other processes on the machine only ever slow a pass down.
    """
    for _ in iterator_factory():
        pass
    rates = []
    for _ in range(epochs):
        count, start = 0, time.perf_counter()
        for batch in iterator_factory():
            count += len(batch[0]) if isinstance(batch, tuple) else len(batch)
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=2048, help="records to generate (default: 2048)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed passes (default: 3)")
    parser.add_argument("--quick", action="store_true", help="256 images, 1 pass: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs = 256, 1

    with tempfile.TemporaryDirectory() as tmp:
        manual = Path(tmp, "manual")
        write_eight_label_release(manual, args.images)
        data_dir = Path(tmp, "tfds")
        builder = tfds.builder("affectnet/emotions8", data_dir=data_dir)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
        records = builder.as_dataset(
            split="train",
            decoders={"image": tfds.decode.SkipDecoding()},
            shuffle_files=False,
            read_config=tfds.ReadConfig(interleave_cycle_length=4),
        )
        encoded = [example["image"] for example in records.as_numpy_iterator()]
        print(f"{len(encoded)} records of {SIZE}x{SIZE} JPEG, batch {BATCH}, {os.cpu_count()} CPUs")

        def pipeline(**kwargs):
            return make_dataset(
                "affectnet/emotions8",
                "train",
                task="exp",
                target="original",
                image_size=SIZE,
                batch_size=BATCH,
                training=True,
                data_dir=data_dir,
                seed=0,
                **kwargs,
            )

        dataset = pipeline()
        unaugmented = pipeline(augment=False)

        def decode_only(decode):
            # The same TFRecords, read and decoded: nothing but the decode (from an in-memory
            # from_tensor_slices of the bytes it ran slower than reading the records).
            return (
                records.map(lambda ex: ex["image"])
                .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(BATCH)
                .prefetch(tf.data.AUTOTUNE)
            )

        decoders = {
            "decode_jpeg": lambda x: tf.io.decode_jpeg(x, channels=3),
            "decode_image": lambda x: tf.io.decode_image(x, channels=3, expand_animations=False),
        }

        def python_loop(source):
            batch = []
            for data in source:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                batch.append(cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
                if len(batch) == BATCH:
                    yield np.stack(batch)
                    batch = []
            if batch:
                yield np.stack(batch)

        def record_images():
            for example in records.as_numpy_iterator():
                yield example["image"]

        rate_pipeline = images_per_second(lambda: iter(dataset), args.epochs)
        rate_plain = images_per_second(lambda: iter(unaugmented), args.epochs)
        rate_decoders = {
            name: images_per_second(lambda d=decode: iter(decode_only(d)), args.epochs)
            for name, decode in decoders.items()
        }
        rate_decode = max(rate_decoders.values())
        rate_loop = images_per_second(lambda: python_loop(record_images()), args.epochs)
        rate_loop_memory = images_per_second(lambda: python_loop(encoded), args.epochs)

    print(f"{'path':<42}{'images/s':>10}")
    print(f"{'make_dataset (training, augmented)':<42}{rate_pipeline:>10.0f}")
    print(f"{'make_dataset (training, no augmentation)':<42}{rate_plain:>10.0f}")
    for name, rate in rate_decoders.items():
        print(f"{'raw decode limit, tf.io.' + name:<42}{rate:>10.0f}")
    print(f"{'plain Python loop (cv2, one by one)':<42}{rate_loop:>10.0f}")
    print(f"{'  the same loop on bytes in memory':<42}{rate_loop_memory:>10.0f}")
    print(f"make_dataset / loop:         {rate_pipeline / rate_loop:5.2f}x   (target >= 5x)")
    print(f"make_dataset / loop, memory: {rate_pipeline / rate_loop_memory:5.2f}x")
    print(
        f"make_dataset / decode limit: {rate_pipeline / rate_decode:5.0%}   (target >= 70%; the faster decoder)"
    )
    print(f"unaugmented / decode limit:  {rate_plain / rate_decode:5.0%}")


if __name__ == "__main__":
    main()
