"""What a compressed model is measured by: clean, PGD and AutoAttack accuracy with intervals and
sanity flags, the papers' native attacks, and the spectral diagnostics of its weights."""
