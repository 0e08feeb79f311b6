"""gem_lightning: PyTorch Lightning image classification framework."""
