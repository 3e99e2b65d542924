"""Datasets: images plus ground-truth face boxes, and the protocols that score detections on them.

This layer sits below the harness and above the model families: it imports only the standard
library, numpy, scipy, OpenCV (and pycocotools, lazily), retinabench.errors and
retinabench.model.images.

    records.py         Item, Dataset (+ describe()), DatasetError, the box convention and checks
    spec.py            open_dataset("widerface:PATH" | "coco:FILE.json" | "voc:DIR" | "dlib[:split][@scale]", cache)
    widerface.py       WIDER FACE val: gt txt, images, easy/medium/hard .mat setting lists
    dlib_faces.py      dlib's XML format and dlib's example faces (train / test splits)
    fetch.py           fetch dlib's faces from Debian's source package (python -m retinabench.datasets.fetch dlib)
    downscale.py       photos downscaled once into the cache, boxes transformed exactly
    folders.py         a user's COCO JSON file or Pascal VOC XML folder
    image_size.py      image sizes from file headers (bounds checks without decoding)
    wider_protocol.py  the official WIDER FACE easy/medium/hard AP
    plain_ap.py        VOC-rule AP at one IoU (AP50) and recall at a score threshold
    coco_ap.py         COCO AP@[.5:.95] / AP50 / AP75 through pycocotools
    bootstrap.py       AP50 bootstrap interval over images, paired AP difference
"""
from retinabench.datasets.bootstrap import Interval, bootstrap_ap, paired_ap_difference
from retinabench.datasets.coco_ap import coco_ap
from retinabench.datasets.dlib_faces import read_dlib_xml
from retinabench.datasets.fetch import SourceUnreachable, default_cache_dir, fetch_dlib_faces
from retinabench.datasets.plain_ap import average_precision, match_detections, recall_at
from retinabench.datasets.records import EDGE_TOLERANCE, Dataset, DatasetError, Item
from retinabench.datasets.spec import KINDS, open_dataset
from retinabench.datasets.wider_protocol import wider_ap, write_wider_predictions

__all__ = [
    "Dataset", "DatasetError", "EDGE_TOLERANCE", "Interval", "Item", "KINDS", "SourceUnreachable",
    "average_precision", "bootstrap_ap", "coco_ap", "default_cache_dir", "fetch_dlib_faces", "match_detections",
    "open_dataset", "paired_ap_difference", "read_dlib_xml", "recall_at", "wider_ap", "write_wider_predictions",
]
