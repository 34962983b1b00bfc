"""rklu.methods"""
