"""Pieces shared by both ops: Triton tiles, masking, input checks, compile specs, backend cost model."""
