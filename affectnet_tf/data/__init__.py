"""The input pipeline: TFDS splits to batches of images and targets, one module a concept.

- :mod:`~affectnet_tf.data.tables`: a prepared split's label table (every feature but the image);
- :mod:`~affectnet_tf.data.targets`: the targets computed from it (majority vote, soft,
  Dawid-Skene, crowd answers, valence/arousal means and medians);
- :mod:`~affectnet_tf.data.partition`: the seeded, stratified cut into train / selection / test;
- :mod:`~affectnet_tf.data.augment`: training augmentation;
- :mod:`~affectnet_tf.data.images`: the one image decode / resize path;
- :mod:`~affectnet_tf.data.pipeline`: ``make_dataset``, the ``tf.data`` pipeline over them.
"""
