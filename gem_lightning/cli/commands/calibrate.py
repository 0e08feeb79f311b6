"""``python main.py calibrate --ckpt_path X.ckpt --output Y.ckpt --config ... --data.data_dir ...``: calibrated probabilities.

Fits a temperature on the validation split's photos (held out from training: ``data.val_fraction``
and ``data.seed`` as in training) so that a predicted "91 %" is right about 91 % of the time, and
writes a copy of the checkpoint that carries it: ``test``, ``predict``, ``serve``, ``export`` and the
API then answer calibrated probabilities. Prints the expected calibration error before and after.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from gem_lightning.errors import UserInputError
from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint
from gem_lightning.training.calibration import HeldOutProbabilities, expected_calibration_error, fit_temperature, with_temperature
from gem_lightning.training.combine import calibrated_checkpoint, save_checkpoint


def main(argv: Sequence[str]) -> dict[str, float]:
    from gem_lightning.cli.app import cli_main

    parser = argparse.ArgumentParser(prog="main.py calibrate", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument(
        "--ckpt_path", required=True, help="the trained (or ensemble) checkpoint; runs:/... and models:/... are read from MLflow"
    )
    parser.add_argument("--output", type=Path, required=True, help="the calibrated checkpoint to write (not overwritten)")
    options, validate_args = parser.parse_known_args(argv)
    if options.output.exists():
        raise UserInputError(f"--output {str(options.output)!r} already exists: give another path (nothing was overwritten).")
    ckpt_path = resolve_checkpoint(options.ckpt_path)
    held_out = HeldOutProbabilities()
    cli = cli_main(["validate", *validate_args, "--ckpt_path", str(ckpt_path)], callbacks=[held_out])
    if not held_out.probs:
        raise UserInputError(
            "calibrate fits on the validation split, and it is empty: set --data.val_fraction (and --data.seed) as in training."
        )
    probs, targets = held_out.collected()
    trained_temperature = float(cli.model.hparams.temperature)
    temperature = fit_temperature(probs, targets)
    result = {
        "photos": len(targets),
        "temperature": trained_temperature * temperature,  # the held-out probabilities already carried the old one
        "ece_before": expected_calibration_error(probs, targets),
        "ece_after": expected_calibration_error(with_temperature(probs, temperature), targets),
    }
    save_checkpoint(calibrated_checkpoint(ckpt_path, result["temperature"]), options.output)
    options.output.with_suffix(".calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"Temperature {result['temperature']:.3f} fitted on {result['photos']} held-out photos: expected calibration error "
        f"{result['ece_before']:.4f} -> {result['ece_after']:.4f}. Wrote {options.output}."
    )
    return result
