"""Builtin task plugins (import name ``forgetbench_tasks``), one module per family."""
