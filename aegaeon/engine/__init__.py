"""The per-device engine: model runner, switcher and step loop."""
