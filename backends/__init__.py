"""One module per runtime; see base.py for the interface and the registry."""
