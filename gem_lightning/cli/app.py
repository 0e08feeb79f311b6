"""The command line: ``fit``, ``validate``, ``test`` and ``predict`` driven by YAML configs.

Class names and the input size flow from the data module into the model (never typed twice).
When ``validate``, ``test`` or ``predict`` get a checkpoint, the checkpoint decides both: the
network must be rebuilt exactly as it was trained, whatever folder the images now come from.
"""

from __future__ import annotations

import importlib
import sys

from jsonargparse import Namespace, lazy_instance
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from gem_lightning.cli.commands import COMMANDS
from gem_lightning.cli.errors import ConciseErrorParser, check_config_files, check_trainer_runs_here, hardware_hint, report_user_errors
from gem_lightning.cli.moved import check_moved_settings
from gem_lightning.cli.precision import AutoPrecisionTrainer
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.errors import UserInputError
from gem_lightning.inference.runtime_callback import InferenceRuntime
from gem_lightning.models import spec_from_config
from gem_lightning.resilience import ResumableModelCheckpoint, make_resumable
from gem_lightning.resilience.signals import listen_for_requeue_signal
from gem_lightning.tracking.checkpoint_uri import resolve_checkpoint
from gem_lightning.tracking.server import check_tracker_packages, check_trackers_reachable
from gem_lightning.training.callbacks.prediction_writer import PredictionWriter
from gem_lightning.training.callbacks.reports import EvaluationReport, LearningCurves
from gem_lightning.training.callbacks.timing import EpochTimer
from gem_lightning.training.callbacks.trackers import TrackerArtifacts
from gem_lightning.training.checkpoints import check_checkpoint_fits, checkpoint_hparams
from gem_lightning.training.metrics import MONITOR
from gem_lightning.training.module import GemClassifier

LINKED_FROM_DATA = {"class_names", "image_size", "preprocessing", "class_counts", "progressive_resizing", "task"}
CHOSEN_AT_INFERENCE = {"tta", "top_k", "channels_last", "compile"}
"""Model options a user may change when evaluating or predicting with a trained checkpoint."""


class GemCLI(LightningCLI):
    """LightningCLI with gem-lightning's links, checkpointing and prediction writer, and a trainer
    whose ``precision`` also takes ``auto`` (:class:`~gem_lightning.cli.precision.AutoPrecisionTrainer`).

    With ``prepare_only``, the subcommand's model, data module and trainer are built (the model from
    ``--ckpt_path`` as the subcommand would rebuild it) and not run: for commands that run passes of
    their own (``calibrate``).
    """

    def __init__(self, *args, prepare_only: bool = False, **kwargs) -> None:
        self.prepare_only = prepare_only
        kwargs.setdefault("trainer_class", AutoPrecisionTrainer)
        super().__init__(*args, **kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        if not self.prepare_only:
            super()._run_subcommand(subcommand)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ModelSummary, "summary")
        parser.set_defaults({"summary.max_depth": 3})
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(EpochTimer, "epoch_timer")
        parser.add_lightning_class_args(EvaluationReport, "report")
        parser.add_lightning_class_args(LearningCurves, "curves")
        parser.add_lightning_class_args(InferenceRuntime, "inference")  # --inference.runtime torch|onnxruntime|onnxruntime-int8
        parser.add_lightning_class_args(TrackerArtifacts, "trackers")
        parser.set_defaults({"trainer.logger": lazy_instance(CSVLogger, save_dir="runs", name="gem")})
        parser.link_arguments("data.class_names", "model.class_names", compute_fn=self._class_names, apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.link_arguments("data.preprocessing", "model.preprocessing", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", compute_fn=self._task, apply_on="instantiate")
        parser.link_arguments("data.class_counts", "model.class_counts", apply_on="instantiate")
        parser.link_arguments("data.progressive_resizing", "model.progressive_resizing", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """From a checkpoint, rebuild the network as it was trained and feed the data what it expects.

        A checkpoint kept by MLflow (``runs:/...``, ``models:/...``) is downloaded first, and the
        local copy is what every later step reads."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config  # None: cli_main(args, run=False)
        check_tracker_packages(_class_paths(config.trainer.get("logger")))
        if config.get("ckpt_path"):
            config.ckpt_path = str(resolve_checkpoint(config.ckpt_path))
        if subcommand in (None, "fit"):
            if config.data.image_size is None:
                config.data.image_size = spec_from_config(config.model.network.as_dict()).normalization().input_size
            return
        hparams = checkpoint_hparams(config.get("ckpt_path"))  # checked: one error line for a bad file
        for key, value in hparams.items():
            if key in config.model and key not in LINKED_FROM_DATA | CHOSEN_AT_INFERENCE:
                config.model[key] = (
                    Namespace(class_path=value["class_path"], init_args=Namespace(value["init_args"])) if key == "network" else value
                )
        if "image_size" in hparams:
            config.data.image_size = hparams["image_size"]
        for key, value in (hparams.get("preprocessing") or {}).items():
            config.data[key] = value
        self.checkpoint_class_names = hparams.get("class_names")
        self.checkpoint_task = hparams.get("task", "multiclass")

    def _class_names(self, data_class_names: list[str] | None) -> list[str] | None:
        """The data's class names; when predicting from a checkpoint alone, the checkpoint's."""
        return data_class_names or getattr(self, "checkpoint_class_names", None)

    def _task(self, data_task: str | None) -> str:
        """A checkpoint's task when evaluating or predicting with one, else the data's (a labels file is multi-label)."""
        return getattr(self, "checkpoint_task", None) or data_task or "multiclass"

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Lightning's, without its warning about ``args`` given while ``sys.argv`` holds arguments:
        tools such as ``main.py seeds`` run the CLI with arguments of their own."""
        self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """Lightning would copy every checkpoint hyperparameter into the model's config, including
        the linked ones, which jsonargparse rejects; ``before_instantiate_classes`` and
        ``instantiate_classes`` do it through the data module instead."""

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The trainer, with atomic checkpoint writes, random-generator states in checkpoints and a
        checkpoint on SIGTERM and Ctrl-C (``gem_lightning.resilience``); refused, as a user error,
        when the device or precision asked for cannot run here."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:
            raise hardware_hint(error) from error
        precision = {**self._get(self.config_init, "trainer", default={}), **kwargs}.get("precision")
        return make_resumable(check_trainer_runs_here(trainer, precision))

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        check_same_task(getattr(self, "checkpoint_task", None), self.datamodule.task)
        names = getattr(self, "checkpoint_class_names", None)
        if names and self.datamodule.class_names and list(self.datamodule.class_names) != list(names):
            raise UserInputError(
                f"The checkpoint was trained on {len(names)} classes ({', '.join(names[:5])}, ...) but "
                f"data.data_dir has {len(self.datamodule.class_names)} ({', '.join(self.datamodule.class_names[:5])}, ...): "
                "evaluate on a folder with the same class folders."
            )
        check_checkpoint_fits(self.model, config.get("ckpt_path"), fitting=subcommand == "fit")
        for callback in self.trainer.callbacks:  # a multi-label model is best by mAP: watch that by default
            if isinstance(callback, ModelCheckpoint | EarlyStopping) and callback.monitor == MONITOR:
                callback.monitor = self.model.monitor
        if subcommand:  # last, as it starts the MLflow run: a command that will run refuses a tracker that does not answer
            check_trackers_reachable(self.trainer.loggers)
        if subcommand == "fit":
            self.model.prepare_training(from_scratch=not config.get("ckpt_path"))


class ParseOnlyCLI(GemCLI):
    """The command line that stops once it has read its options: the configuration ``fit`` would run
    (``config``) and the parser that read it (``parser``), with nothing built or run."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def check_same_task(checkpoint_task: str | None, data_task: str | None) -> None:
    """A multi-label checkpoint evaluates labels files, a single-label one class folders (or streams of them)."""
    if checkpoint_task and data_task and checkpoint_task != data_task:
        trained, given = ("a labels file", "class folders") if checkpoint_task == "multilabel" else ("class folders", "a labels file")
        raise UserInputError(
            f"The checkpoint is {checkpoint_task} (trained on {trained}) but data.data_dir is {given} ({data_task}): "
            f"evaluate it on {trained}, as it was trained."
        )


def _class_paths(setting: object) -> list[str]:
    """The class paths a ``class_path`` setting (one, or a list) names; none for ``false`` or a default object."""
    items = setting if isinstance(setting, list) else [setting]
    return [item.class_path for item in items if isinstance(item, Namespace) and isinstance(item.get("class_path"), str)]


DESCRIPTION = """gem-lightning: train, evaluate and serve image classifiers on folder-per-class photo sets.

Besides fit/validate/test/predict: `optimize` (a folder -> a stream at a path or s3:// for large
sets; then --data.data_dir <stream>), `prepare` (split one folder-per-class collection into train/ and
test/), `preview` (augmentation preview and a sample batch), `lr_find` (learning-rate range test),
`export` (TorchScript / ONNX), `seeds` (fit and test over several seeds: mean +- std), `tune`
(search fit settings with Optuna, on one machine or a SLURM array), `ensemble` (several checkpoints
as one), `calibrate` (temperature, prediction sets and "unknown" on photos the checkpoint never
trained on), `serve` (HTTP server and web page), `audit` (label issues, near-duplicates and
train/test leakage, with a corrections CSV for --data.corrections). Run
`python main.py <command> --help` for each."""


def cli_main(
    args: list[str] | None = None, *, run: bool = True, callbacks: list[Callback] | None = None, prepare_only: bool = False
) -> GemCLI | object:
    """Entry point of ``python main.py`` and the ``gem-lightning`` command.

    Mistakes in the user's input end the run with the error message and exit status 2
    (``gem_lightning.cli.errors``). ``callbacks`` join the trainer's (commands built on the CLI use it);
    ``prepare_only`` builds the subcommand's objects without running it (:class:`GemCLI`).
    """
    with report_user_errors():
        return run_cli(args, run=run, callbacks=callbacks, prepare_only=prepare_only)


def run_cli(
    args: list[str] | None = None,
    *,
    run: bool = True,
    callbacks: list[Callback] | None = None,
    prepare_only: bool = False,
    cli_class: type[GemCLI] = GemCLI,
) -> GemCLI | object:
    """:func:`cli_main` without its error reporting: the user's mistakes are raised, as
    ``UserInputError``, for commands that run the CLI many times and decide what one means (``tune``).
    ``cli_class`` replaces :class:`GemCLI` (a subclass that only parses, say)."""
    argv = sys.argv[1:] if args is None else list(args)
    check_moved_settings(argv, check_config_files(argv))
    if run and argv and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return cli_class(
        GemClassifier,
        GemDataModule,
        args=args,
        run=run,
        seed_everything_default=42,
        trainer_defaults={"callbacks": callbacks} if callbacks else None,
        save_config_kwargs={"overwrite": True},
        parser_class=ConciseErrorParser,
        parser_kwargs={"description": DESCRIPTION},
        prepare_only=prepare_only,
    )


def parse_fit_options(args: list[str]) -> ParseOnlyCLI:
    """How ``fit`` reads ``args`` (without ``fit``): its ``config`` and ``parser``; mistakes are raised (:func:`run_cli`)."""
    return run_cli(args, run=False, cli_class=ParseOnlyCLI)


def main() -> int:
    """``python main.py`` and the ``gem-lightning`` console script: the exit status of the command."""
    listen_for_requeue_signal()
    result = cli_main()
    return result if isinstance(result, int) else 0
