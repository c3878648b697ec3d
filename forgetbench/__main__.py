"""``python -m forgetbench`` runs the CLI."""

from forgetbench.cli import main

main()
