"""What readers see: the leaderboard built from records (tables, CSV, JSON, plots), printed tables,
and the validation of submitted records."""
