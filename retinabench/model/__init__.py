"""RetinaFace model families: preprocessing, anchors, decode, NMS."""
