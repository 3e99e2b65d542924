"""A small graph IR of the ops RetinaFace uses, with importers and exporters."""
