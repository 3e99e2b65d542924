"""retinabench: an honest multi-backend benchmark harness for RetinaFace."""

__version__ = "0.1.0"
