"""rklu.training"""
