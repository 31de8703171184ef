"""The `rbench` subcommands, one module a concern; `rbench.cli` gathers them into the group.

- `run`: run one compression (`run`) or a grid of them (`sweep`).
- `inspect`: look at what exists and at a model (`list methods`, `list suites`, `diagnose`).
- `publish`: what goes onto the leaderboard (`leaderboard`, `validate`, `check`).
"""
