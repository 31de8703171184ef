"""What a suite trains on: the datasets' fixed splits (embedded or from --data-root), the resident
batches, and the architectures (with normalisation as their first module)."""
