"""An example rbench plugin: one method, registered through the `rbench.methods` entry point."""

__version__ = "0.1.0"
