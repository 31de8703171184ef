"""The vocabulary every stage shares: errors, suites (data, model, threat model, recipes,
protocols), the method interface and registry, the budget with its ratio and compute accounting, PGD."""
