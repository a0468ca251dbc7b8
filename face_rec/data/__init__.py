"""Datasets, image decoding and pair lists."""
