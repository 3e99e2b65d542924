#!/usr/bin/env python3
"""RetinaFace multi-backend benchmark harness: see README.md, or `python bench.py --help`."""
import sys

from retinabench.cli import main

if __name__ == "__main__":
    sys.exit(main())
