"""Training engine: the training task (model, losses, EMA, distributed wrapping) and the loop around it."""
