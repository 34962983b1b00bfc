"""The unlearning-KL op: public entry (``api``), PyTorch reference, and its backends."""
