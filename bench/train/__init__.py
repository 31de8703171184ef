"""How models are trained: the one adversarial training loop, the context lent to methods (loaders,
trainer, attack, meter), and the shared optimisation parts of methods (ADMM, pruning scores)."""
