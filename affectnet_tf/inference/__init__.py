"""Inference: face crops, videos, and the predictor used by the predict command and the server.

``faces`` (MTCNN crops), ``video`` (sampled frames, box cache), ``predictor`` (the model on face
crops, the records), ``inputs`` (prediction over images, folders and videos), ``outputs`` (JSON
lines, CSV, clip summaries, annotated copies), ``options`` (the face-crop flags).
"""
