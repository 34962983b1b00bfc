"""rklu.models"""
