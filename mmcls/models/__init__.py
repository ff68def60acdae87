"""Models: frame encoders, the single-stream fusion classifier and the model folder format."""
