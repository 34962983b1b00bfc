"""Kernel tests (rklu.kernels): shared builders live in kernel_cases.py next to this file."""
