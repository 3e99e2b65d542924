"""Device stages of the model families (GPU preprocessing, decode + NMS), shared by every backend
that runs a variant with its stages on the device (torch, TensorRT). Imports torch lazily."""
