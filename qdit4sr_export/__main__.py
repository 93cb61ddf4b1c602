"""``python -m qdit4sr_export`` runs the CLI."""

from qdit4sr_export.cli import main

main()
