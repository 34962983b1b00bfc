"""rklu.eval"""
