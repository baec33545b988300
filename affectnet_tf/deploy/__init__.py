"""Deployment: export to SavedModel, TFLite and ONNX with checked parity, and the prediction server."""
