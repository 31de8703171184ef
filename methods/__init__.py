"""Compression methods, one file each, registered with `@register_method` (see CONTRIBUTING.md)."""
