"""The vocabulary every stage shares: suites (datasets, threat model, recipes, protocols), the
method interface and registry, the budget (ratio, MACs, compute meter), PGD, the run config."""
