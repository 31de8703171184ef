"""rbench: a benchmark suite and leaderboard for robust model compression."""

__version__ = "0.1.0"
