"""The config schema, its checks, and config files loaded outside absl."""
