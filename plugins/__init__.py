"""Builtin method plugins (import name ``forgetbench_plugins``), one module per method."""
