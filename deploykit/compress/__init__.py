"""Torch-side compression: pruning, low-rank, compact filters, distillation on nn.Module."""
