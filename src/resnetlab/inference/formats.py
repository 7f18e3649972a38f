"""What `resnetlab export` offers: the formats (with their file suffixes) and the default ONNX opset. Plain
constants, so that the command line can describe them without importing torch."""

FORMATS = {"onnx": ".onnx", "export": ".pt2"}
DEFAULT_OPSET = 18
