"""Using trained models: prediction from a checkpoint."""
