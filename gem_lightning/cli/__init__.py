"""The command line: LightningCLI (``app``), the other commands (``commands/``), how mistakes end a run."""
