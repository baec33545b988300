"""The input pipeline: TFDS splits to batches of images and targets, and the one image decode/resize path."""
