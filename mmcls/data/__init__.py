"""Data: annotations, categories, frame sources, text encoding, datasets and the synthetic generator."""
