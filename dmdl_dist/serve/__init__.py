"""Using a trained model: feature extraction to files, export (ONNX, TorchScript) and its check, gallery search."""
