"""Training and inference engine: data pipeline from the archive, training loop,
checkpoints (safetensors + JSON card) and ensemble inference."""
