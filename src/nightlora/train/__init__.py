"""LoRA training: one contract (base.Trainer), two backends (mlx, torch)."""
