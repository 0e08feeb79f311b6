"""The commands beside LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``.

Each module here is a thin command: it parses its options, calls library code from the rest of the
package and prints what it did. ``main(argv)`` is its entry point (``python main.py <name> --help``).
"""

COMMANDS: dict[str, str] = {
    "prepare": "gem_lightning.cli.commands.prepare",
    "optimize": "gem_lightning.cli.commands.optimize",
    "preview": "gem_lightning.cli.commands.preview",
    "lr_find": "gem_lightning.cli.commands.lr_find",
    "seeds": "gem_lightning.cli.commands.seeds",
    "tune": "gem_lightning.cli.commands.tune",
    "ensemble": "gem_lightning.cli.commands.ensemble",
    "calibrate": "gem_lightning.cli.commands.calibrate",
    "export": "gem_lightning.cli.commands.export",
    "serve": "gem_lightning.cli.commands.serve",
    "audit": "gem_lightning.cli.commands.audit",
}
"""Command name -> module whose ``main(argv)`` runs it (imported only when that command runs)."""
