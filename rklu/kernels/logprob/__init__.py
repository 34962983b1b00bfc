"""The label log-prob op: public entry (``api``), PyTorch reference, and its backends."""
