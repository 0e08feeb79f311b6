"""``python main.py calibrate --ckpt_path X.ckpt --output Y.ckpt --config ... --data.data_dir ...``: calibrated answers.

Fits, on photos the checkpoint never trained on, what makes its answers honest, and writes a copy
of the checkpoint that carries it (``test``, ``predict``, ``serve``, ``export`` and the API use it):

- a temperature, so that a predicted "91 %" is right about 91 % of the time;
- prediction sets (``--inference.coverage``): split-conformal RAPS scores of the held-out photos;
- "unknown" (``--inference.unknown``): the held-out photos' scores of every kind, and the class
  statistics of the training photos' features.

A multi-label checkpoint gets its label sets' promise only (``--inference.coverage``: the sets hold
on average that share of a photo's true labels); its thresholds per label were tuned by ``fit``.

The held-out photos are the validation split (``data.val_fraction`` and ``data.seed`` default to the
checkpoint's own) or ``--calibration_dir``. The test-time augmentation is the checkpoint's own
(``serve`` and the API answer with it) unless ``--model.tta`` says otherwise: the calibration holds
for the one it was fitted with, and ``predict`` refuses another. The checkpoint records which photos it trained on, and
any overlap is refused in one line. Prints the expected calibration error before and after.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Trainer
from torch.utils.data import Dataset

from gem_lightning.data.class_folder import class_folder_dataset
from gem_lightning.data.datasets import collate_channels_last
from gem_lightning.data.loader import SignalSafeDataLoader
from gem_lightning.data.provenance import PhotoRecord
from gem_lightning.data.transforms import eval_transform
from gem_lightning.errors import UserInputError
from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint
from gem_lightning.training.calibration_record import RAPS_K_REG, RAPS_LAMBDA, fit_calibration, fit_label_coverage
from gem_lightning.training.checkpoints import load_checkpoint
from gem_lightning.training.combine import DATA_STATE, TRAINED_ON, calibrated_checkpoint, save_checkpoint
from gem_lightning.training.held_out import Measure, Measured

SPLIT_SETTINGS = ("val_fraction", "seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py calibrate",
        description="Fit a temperature, prediction sets (--inference.coverage) and 'unknown' (--inference.unknown) on photos the "
        "checkpoint never trained on, into a copy of the checkpoint (a multi-label one: its label sets' coverage).",
        epilog="Every other option is validate's (python main.py validate --help): the training config (--config), --data.data_dir "
        "(its validation split is the held-out photos unless --calibration_dir; data.val_fraction and data.seed default to the "
        "checkpoint's own), --model.tta (default: the checkpoint's own), --trainer.accelerator, --trainer.precision.",
    )
    parser.add_argument(
        "--ckpt_path", required=True, help="the trained (or ensemble) checkpoint; runs:/... and models:/... are read from MLflow"
    )
    parser.add_argument("--output", type=Path, required=True, help="the calibrated checkpoint to write (not overwritten)")
    parser.add_argument(
        "--calibration_dir", type=Path, default=None,
        help="a folder of <Class>/ photos the checkpoint never trained on, instead of the validation split "
        "(for a model trained on every photo, data.val_fraction 0); --data.data_dir, if given, still gives the "
        "training photos whose features the feature-distance 'unknown' scores compare with",
    )  # fmt: skip
    parser.add_argument(
        "--trust_split", action="store_true",
        help="calibrate although the checkpoint cannot show which photos it trained on (written before it kept that "
        "record, or trained on a stream the held-out photos cannot be compared with): you vouch that none of them trained it",
    )  # fmt: skip
    parser.add_argument("--raps_lambda", type=float, default=RAPS_LAMBDA, help="RAPS's penalty per class ranked below raps_k_reg (0: APS)")
    parser.add_argument("--raps_k_reg", type=int, default=RAPS_K_REG, help="classes a prediction set holds before the penalty starts")
    return parser


def main(argv: Sequence[str]) -> dict[str, float]:
    from gem_lightning.cli.app import cli_main

    options, cli_args = build_parser().parse_known_args(argv)
    _check_options(options)
    options.ckpt_path = Path(resolve_checkpoint(options.ckpt_path))  # a download from MLflow: after the options are known to be right
    checkpoint = load_checkpoint(options.ckpt_path)
    trained_split = _training_split(checkpoint)
    own_settings = _own_settings(checkpoint, trained_split, cli_args)
    cli = cli_main(["validate", *cli_args, *own_settings, "--ckpt_path", str(options.ckpt_path)], prepare_only=True)
    multilabel = cli.model.hparams.get("task") == "multilabel"
    if multilabel and options.calibration_dir is not None:
        raise UserInputError(
            f"--calibration_dir holds <Class>/ folders, one label a photo; {options.ckpt_path.name} is multi-label: calibrate it on "
            "the validation split of a labels file (--data.data_dir <labels.csv>: its val rows, or data.val_fraction as in training)."
        )
    held_out, photos, description, training = _photos(cli.datamodule, cli.model.class_names, options, trained_split)
    _refuse_trained_on(_trained_on(checkpoint), photos, description, options, trained_split)
    measured = _measure(cli, held_out, options.ckpt_path)
    fitted = {"temperature": float(cli.model.hparams.temperature), "tta": cli.model.model.tta, "description": description}
    if multilabel:
        temperature, record, summary = fit_label_coverage(measured, **fitted)
    else:
        trained = _measure(cli, training, options.ckpt_path) if training is not None and measured.features is not None else None
        temperature, record, summary = fit_calibration(measured, trained, **fitted, lam=options.raps_lambda, k_reg=options.raps_k_reg)
    save_checkpoint(calibrated_checkpoint(options.ckpt_path, temperature, record), options.output)
    options.output.with_suffix(".calibration.json").write_text(json.dumps({"held_out": description, **summary}, indent=2) + "\n")
    _report(summary, description, record, options.output)
    return summary


def _check_options(options: argparse.Namespace) -> None:
    if options.output.exists():
        raise UserInputError(f"--output {str(options.output)!r} already exists: give another path (nothing was overwritten).")
    if options.raps_lambda < 0 or options.raps_k_reg < 0:
        raise UserInputError(f"--raps_lambda and --raps_k_reg must be 0 or more, got {options.raps_lambda} and {options.raps_k_reg}.")


def _training_split(checkpoint: dict) -> dict:
    """How the checkpoint's fit split its photos: ``val_fraction`` and ``seed`` (None where not kept), and the streams it read."""
    split = {key: (checkpoint.get("datamodule_hyper_parameters") or {}).get(key) for key in SPLIT_SETTINGS}
    return {**split, "streams": sorted(name.rpartition("#")[0] for name in (_trained_on(checkpoint) or PhotoRecord()).streams)}


def _own_settings(checkpoint: dict, trained_split: dict, cli_args: list[str]) -> list[str]:
    """The checkpoint's own split and test-time augmentation as command-line options, for those ``cli_args`` do not name
    (they come after a restated config, so they win over it)."""
    given = {arg.partition("=")[0] for arg in cli_args}
    own = {f"--data.{key}": trained_split[key] for key in SPLIT_SETTINGS} | {"--model.tta": checkpoint["hyper_parameters"].get("tta")}
    return [arg for name, value in own.items() if value is not None and name not in given for arg in (name, str(value))]


def _photos(
    datamodule, class_names: list[str], options: argparse.Namespace, trained_split: dict
) -> tuple[Dataset, PhotoRecord | None, str, Dataset | None]:
    """The held-out photos, their record and description, and the training photos (or None), read as evaluation reads."""
    transform = eval_transform(datamodule.image_size)
    source = datamodule.source
    if options.calibration_dir is not None:
        held_out, photos = class_folder_dataset(
            options.calibration_dir, class_names, datamodule.settings, cache=datamodule.cache,
            loader=datamodule.loader, transform=transform, what="--calibration_dir",
        )  # fmt: skip
        description = f"the photos of {str(options.calibration_dir)!r}"
    elif source is None:
        raise UserInputError("calibrate needs held-out photos: --data.data_dir (its validation split) or --calibration_dir <folder>.")
    datasets = {}
    if source is not None:
        datamodule.prepare_data()
        datasets = source.evaluation_datasets(transform)
    training = datasets.get("train") if len(datasets.get("train") or []) else None
    if options.calibration_dir is not None:
        return held_out, photos, description, training
    if not len(datasets.get("val") or []):
        raise UserInputError(
            f"calibrate fits on photos the checkpoint never saw, and the validation split is empty (data.val_fraction "
            f"{datamodule.hparams.val_fraction}). {_remedy(trained_split)}"
        )
    hparams, photos = datamodule.hparams, source.photos("val")
    split = "" if photos is None or photos.streams else f" (val_fraction {hparams.val_fraction}, seed {hparams.seed})"  # a stream's own
    return datasets["val"], photos, f"the validation split of {hparams.data_dir}{split}", training


def _trained_on(checkpoint: dict) -> PhotoRecord | None:
    state = (checkpoint.get(DATA_STATE) or {}).get(TRAINED_ON)
    return PhotoRecord.from_state(state) if state is not None else None


def _refuse_trained_on(trained: PhotoRecord | None, photos: PhotoRecord | None, description: str, options, trained_split: dict) -> None:
    """One line when the held-out photos include (or cannot be shown not to include) photos the checkpoint trained on."""
    if trained is not None and photos is not None:
        memorised = "fitted on them, the calibration learns how the model behaves on photos it memorised"
        if trained.streams & photos.streams:
            name = options.ckpt_path.name
            raise UserInputError(
                f"the calibration photos ({description}) are the split that trained {name}: {memorised}. {_remedy(trained_split)}"
            )
        shared = trained.shared_with(photos)
        if shared:
            raise UserInputError(
                f"{shared} of the {len(photos.digests)} distinct calibration photos ({description}) trained {options.ckpt_path.name}: "
                f"{memorised}. {_remedy(trained_split)}"
            )
        if trained.can_tell_apart(photos) or options.trust_split:
            return
        why = "its training photos and these cannot be compared (a stream keeps no digests of its photos)"
    elif options.trust_split:
        return
    else:
        why = "it does not record which photos it trained on (written before gem-lightning kept that record)"
    raise UserInputError(
        f"{options.ckpt_path.name}: {why}, so the calibration photos ({description}) may include some it trained on, which would "
        f"make its answers less honest than uncalibrated ones. Add --trust_split if you know they are held out. {_remedy(trained_split)}"
    )


def _remedy(trained_split: dict) -> str:
    """What to calibrate on instead: held-out photos, or the validation split the checkpoint was trained with."""
    fraction, seed = trained_split["val_fraction"], trained_split["seed"]
    if trained_split["streams"]:
        split = f", or the validation split of the stream it trained on (--data.data_dir {trained_split['streams'][0]})"
    elif fraction is None:
        split = ", or set --data.val_fraction and --data.seed as in training"
    elif fraction:
        split = f", or set --data.val_fraction {fraction} --data.seed {seed} as in training (the default)"
    else:
        split = " (it trained with data.val_fraction 0: on every photo of train/)"
    return f"Give --calibration_dir <a folder of <Class>/ photos it never trained on>{split}."


def _measure(cli, dataset: Dataset, ckpt_path: Path) -> Measured:
    """The checkpoint's answers (and features) on ``dataset``, with the command line's precision and accelerator."""
    measure = Measure()
    trainer = Trainer(
        accelerator=cli.trainer.accelerator, devices=1, precision=cli.trainer.precision, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=cli.trainer.progress_bar_callback is not None, callbacks=[measure],
    )  # fmt: skip
    loader = SignalSafeDataLoader(
        dataset, batch_size=cli.datamodule.batch_size, shuffle=False, collate_fn=collate_channels_last, **cli.datamodule.loader.options()
    )
    trainer.validate(cli.model, dataloaders=loader, ckpt_path=str(ckpt_path), verbose=False)
    return measure.collected()


def _report(summary: dict, description: str, record: dict, output: Path) -> None:
    if record.get("task") == "multilabel":
        print(
            f"Label sets (--inference.coverage) fitted on {summary['photos']} held-out photos ({description}, "
            f"{summary['labels_per_photo']:.2f} labels each): at coverage 0.9 a set holds {summary['set_size_at_0.9']:.2f} labels "
            f"and {summary['label_coverage_at_0.9']:.1%} of a photo's true labels on average.\nWrote {output}."
        )
        return
    kinds = ", ".join(record["unknown"]["held_out"])
    print(
        f"Temperature {summary['temperature']:.3f} fitted on {summary['photos']} held-out photos ({description}): expected "
        f"calibration error {summary['ece_before']:.4f} -> {summary['ece_after']:.4f}.\n"
        f"Prediction sets (--inference.coverage): RAPS, lambda {record['conformal']['lambda']}, k_reg {record['conformal']['k_reg']}; "
        f"at coverage 0.9 the sets of these photos hold {summary['set_size_at_0.9']:.2f} classes on average.\n"
        f"Unknown (--inference.unknown): scores {kinds}"
        + (f" (class statistics of {record['unknown']['training_photos']} training photos)" if record["unknown"]["training_photos"] else "")
        + f".\nWrote {output}."
    )
