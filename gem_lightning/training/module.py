"""The LightningModule: the network, its loss and optimizer, and metrics per stage.

Inputs are ``(B, 3, S, S)`` uint8 batches; the module converts and normalises them on the device,
so the checkpoint alone (class names, image size, normalisation, architecture) is enough to predict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from torchvision.transforms import v2

from gem_lightning.data.progressive_resizing import ProgressiveResizing
from gem_lightning.data.sources import Task
from gem_lightning.errors import UserInputError
from gem_lightning.models import NetworkSpec, VGGSpec, spec_from_config
from gem_lightning.models.classifier import TTA, ImageClassifier
from gem_lightning.training.checkpoints import checkpoint_hparams
from gem_lightning.training.checks import check_multilabel_settings, check_progressive_resizing, check_training_settings
from gem_lightning.training.distillation import Distillation, Teacher
from gem_lightning.training.metrics import LOSS, MONITOR, MULTILABEL_MONITOR, SAMPLES, classification_metrics
from gem_lightning.training.multilabel import MultilabelObjective
from gem_lightning.training.thresholds import label_sets


def batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """MixUp and/or CutMix over a batch (one of them per batch when both are on), or None."""
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def balanced_class_weights(counts: list[int]) -> torch.Tensor:
    """``N / (C * n_c)`` per class (scikit-learn's "balanced": each class weighs as much in all, and the
    average training image keeps weight 1); a class with no training image gets 0 (it is never a target)."""
    counts_tensor = torch.tensor(counts, dtype=torch.float32)
    present = counts_tensor > 0
    weights = torch.zeros_like(counts_tensor)
    weights[present] = counts_tensor.sum() / (present.sum() * counts_tensor[present])
    return weights


class GemClassifier(LightningModule):
    """Classifies square RGB images into ``class_names`` with the network ``network`` builds.

    Args:
        class_names: class names in label order; linked from the data module by the CLI.
        image_size: side of the square input; linked from the data module by the CLI; default: the
            network's input size.
        preprocessing: how photos were decoded for training (auto-crop, background colour);
            linked from the data module, kept so that serving decodes photos the same way.
        class_counts: the training split's images per class, asked when ``fit`` starts (after the
            data is set up); linked from the data module by the CLI; needed by ``class_weights: balanced``.
        progressive_resizing: the data module's schedule, linked by the CLI: a fit checks that the
            network takes the smaller images and that the run's length is known.
        task: ``multiclass`` (one class a photo: softmax, cross-entropy) or ``multilabel`` (any number:
            a sigmoid a class, binary cross-entropy, a threshold per label tuned on the validation
            split and kept in the checkpoint); linked from the data module (a labels file is
            multi-label), or, from a checkpoint, the checkpoint's.
        network: the network spec (``class_path`` and ``init_args`` in YAML):
            ``gem_lightning.models.VGGSpec`` (the seed's CNN, the default), ``TimmSpec`` (any timm
            model, with pretrained weights from local files), ``TorchvisionSpec``, or your own
            ``gem_lightning.models.NetworkSpec`` subclass.
        mean: per-channel mean used to normalise inputs scaled to [0, 1]; default: what the
            network's weights expect (``network.normalization()``), else ImageNet's.
        std: per-channel standard deviation used to normalise inputs; default as ``mean``.
        backbone_lr_ratio: the backbone's learning rate as a fraction of the classifier head's
            (discriminative fine-tuning); 1 trains all layers at one rate.
        label_smoothing: cross-entropy label smoothing.
        class_weights: ``balanced`` weighs each class's training loss by ``N / (C * n_class)`` (counted
            in the training split when ``fit`` starts), so rare classes count as much as common
            ones: for folders with very unequal classes. ``none``: every image counts the same.
        mixup_alpha: MixUp on training batches (Beta(alpha, alpha) mixing weights); 0 is off.
        cutmix_alpha: CutMix on training batches; with both on, each batch uses one at random.
        distillation: distil a trained teacher's soft predictions (``teacher``, ``weight``,
            ``temperature``, ``autocast``); training only: the checkpoint predicts alone.
        channels_last: run convolutions in channels-last memory format (faster on CPUs with
            AMX/AVX-512 and on tensor-core GPUs, especially under bf16).
        compile: run the network under ``torch.compile`` (the first steps pay the compile time).
        tta: test-time augmentation for validate, test and predict: ``hflip`` averages the
            probabilities of each image and its mirror image, ``dihedral`` of its 8 quarter turns
            and mirrors.
        temperature: the calibration temperature applied to evaluation and prediction
            probabilities (``softmax(log(p) / T)``); fitted on held-out photos and written into a
            checkpoint by ``python main.py calibrate``; 1 leaves them as trained.
        top_k: how many ranked classes ``predict`` reports per image.
        optimizer: the optimizer (``class_path`` and ``init_args`` in YAML); Adam, lr 1e-3.
        lr_scheduler: an optional LR scheduler, stepped per epoch, except ``OneCycleLR`` and
            ``gem_lightning.training.schedules.WarmupCosineLR`` (sized to the run), stepped per batch.
    """

    def __init__(
        self,
        class_names: list[str],
        image_size: int | None = None,
        preprocessing: dict | None = None,
        class_counts: Callable[[], list[int]] | None = None,
        progressive_resizing: ProgressiveResizing | None = None,
        task: Task = "multiclass",
        *,
        network: NetworkSpec = VGGSpec(),
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        backbone_lr_ratio: float = 1.0,
        label_smoothing: float = 0.0,
        class_weights: Literal["none", "balanced"] = "none",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        distillation: Distillation | None = None,
        channels_last: bool = True,
        compile: bool = False,
        tta: TTA = "none",
        temperature: float = 1.0,
        top_k: int = 5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if not class_names or len(class_names) < 2:
            raise UserInputError(
                f"model.class_names needs at least two classes, got {class_names!r}: give --data.data_dir (a folder "
                "of train/<Class>/ images) or, to evaluate or predict, --ckpt_path <a trained checkpoint>."
            )
        check_training_settings(
            top_k=top_k,
            label_smoothing=label_smoothing,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            backbone_lr_ratio=backbone_lr_ratio,
            temperature=temperature,
        )
        if task == "multilabel":
            check_multilabel_settings(
                label_smoothing=label_smoothing,
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                class_weights=class_weights,
                distillation=distillation,
            )
        self.network_spec = spec_from_config(network)  # a dict when Lightning rebuilds from a checkpoint outside the CLI
        self.distillation = Distillation(**distillation) if isinstance(distillation, dict) else distillation
        if self.distillation is not None:
            self.distillation.check()
            image_size = self.distillation.student_size or image_size  # the student's checkpoint predicts at its own size
        image_size = image_size or self.network_spec.normalization().input_size
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "class_counts", "progressive_resizing"])
        self.hparams.image_size = image_size
        # Saved as plain, resolved values: the checkpoint alone rebuilds the network (and loads with weights_only).
        self.hparams.network = self.network_spec.to_config()
        self.hparams.distillation = dataclasses.asdict(self.distillation) if self.distillation else None
        if mean is None or std is None:
            normalization = self.network_spec.normalization()
            mean, std = mean or normalization.mean, std or normalization.std
        self.hparams.mean, self.hparams.std = tuple(mean), tuple(std)
        self.class_names = list(class_names)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.class_counts = class_counts
        self.progressive_resizing = progressive_resizing
        network_module = self.network_spec.build(self.num_classes, image_size)
        self.model = ImageClassifier(
            network_module,
            self.hparams.mean,
            self.hparams.std,
            channels_last=channels_last,
            tta=tta,
            temperature=temperature,
            multilabel=task == "multilabel",
        )
        self.teacher: Teacher | None = None
        self.answers: Callable[[torch.Tensor], list[dict[str, Any]]] | None = None  # set for predict: prediction sets, "unknown"
        self.pretrained_loaded = False
        self._inference_engine: Callable[[torch.Tensor], torch.Tensor] | None = None
        if compile:
            self.model.compile()  # in place: parameter names, hence checkpoints, stay the same
        self.batch_mix = batch_mixing(self.num_classes, mixup_alpha, cutmix_alpha)
        self.loss_weights: torch.Tensor | None = None
        self.example_input_array = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)

        self.multilabel = MultilabelObjective(self.num_classes) if task == "multilabel" else None
        if self.multilabel is None:
            self.train_metrics = classification_metrics(self.num_classes, "train/")
            self.val_metrics = classification_metrics(self.num_classes, "val/", calibration=True)
            self.test_metrics = classification_metrics(self.num_classes, "test/", calibration=True)
            # Evaluation losses as metrics: exact under DDP with unequal images per process
            # (Lightning 2.6's sync_dist mean floors an integer sample count, Lightning-AI/pytorch-lightning#21859).
            self.val_loss = MeanMetric()
            self.test_loss = MeanMetric()

    @property
    def monitor(self) -> str:
        """The validation metric that says which checkpoint is best (maximised): accuracy, or mAP for multi-label."""
        return MONITOR if self.multilabel is None else MULTILABEL_MONITOR

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's, for checkpoints of every gem-lightning version (their hyperparameters brought
        to today's shape first, ``checkpoint_hparams``), without distillation: the student predicts alone."""
        hparams = checkpoint_hparams(checkpoint_path)
        kwargs = {"network": hparams["network"], "distillation": hparams["distillation"], **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.prepare_training(from_scratch=self.trainer.ckpt_path is None)

    def on_fit_start(self) -> None:
        if self.progressive_resizing is not None:
            check_progressive_resizing(self.network_spec, self.trainer.estimated_stepping_batches)
        if self.hparams.class_weights == "balanced":
            if self.class_counts is None:
                raise UserInputError(
                    "model.class_weights: balanced needs the training split's class counts: give class_counts "
                    "(the CLI links GemDataModule.class_counts)."
                )
            self.loss_weights = balanced_class_weights(self.class_counts()).to(self.device)

    def prepare_training(self, *, from_scratch: bool) -> None:
        """Read, once, what only training needs: the network's pretrained weights (from scratch only: a
        resumed run takes every weight from its checkpoint) and the distillation teacher. Evaluation
        and prediction need neither. The CLI calls it before the data is read, so that a bad weights
        file or teacher stops the run at once."""
        if from_scratch and not self.pretrained_loaded:
            self.network_spec.load_pretrained(self.model.network)
            self.pretrained_loaded = True
        if self.distillation is not None and self.teacher is None:
            self.teacher = self.distillation.load_teacher(self)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` images, 0-255 -> ``(B, num_classes)`` logits."""
        return self.model(self.at_own_size(images))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities, with test-time augmentation if ``tta`` asks for it; from the inference
        engine instead of the network while one is set (:meth:`set_inference_engine`)."""
        if self._inference_engine is not None:
            return self._inference_engine(images)
        return self.model.probabilities(self.at_own_size(images))

    def set_inference_engine(self, engine: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Let ``engine`` answer :meth:`predict_proba`, hence the evaluation and prediction steps, in place
        of the network: ``(B, 3, S, S)`` images, 0-255 -> ``(B, num_classes)`` probabilities, TTA and
        temperature included (``--inference.runtime``'s ONNX Runtime session of this network). None: the network again."""
        self._inference_engine = engine

    def at_own_size(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` downsampled to the network's ``image_size`` where they are larger: a distilled
        student (``distillation.student_size``) gets batches loaded at its teacher's size."""
        size = self.hparams.image_size
        if images.shape[-1] <= size:
            return images
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)

    # Steps -----------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.multilabel is not None:
            return self._multilabel_training_step(batch)
        images, targets, _ = batch
        soft_targets = targets
        if self.batch_mix is not None:
            images, soft_targets = self.batch_mix(images.float(), targets)
        logits = self(images)
        loss = F.cross_entropy(logits.float(), soft_targets, weight=self.loss_weights, label_smoothing=self.hparams.label_smoothing)
        if self.teacher is not None:
            loss, distill = self.distillation.mix(loss, logits, self.teacher.logits(images))
            self.log("train/distill_loss", distill, on_step=False, on_epoch=True, batch_size=len(targets))
        self.train_metrics.update(logits.detach(), targets)
        self.log(f"train/{LOSS}", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def _multilabel_training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets, _ = batch
        logits = self(images)
        loss = self.multilabel.loss(logits, targets)
        self.multilabel.train_metrics.update(self.multilabel.decide(logits.detach().float().sigmoid()), targets.int())
        self.log(f"train/{LOSS}", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log_dict(self.multilabel.train_metrics, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step(batch, "test")

    def _evaluation_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, targets, indices = batch
        probs = self.predict_proba(images)
        if self.multilabel is not None:
            return self._multilabel_evaluation_step(stage, probs, targets, indices)
        losses = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="none")
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        loss = self.val_loss if stage == "val" else self.test_loss
        metrics.update(probs, targets)
        loss.update(losses)
        self.log(f"{stage}/{LOSS}", loss, on_epoch=True, prog_bar=stage == "val", batch_size=len(targets))
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val", batch_size=len(targets))
        self.log(f"{stage}/{SAMPLES}", float(len(targets)), on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)
        return {"probs": probs, "targets": targets, "indices": indices}

    def _multilabel_evaluation_step(self, stage: str, probs: torch.Tensor, targets: torch.Tensor, indices) -> dict[str, torch.Tensor]:
        tuning = stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        self.multilabel.update(stage, probs, targets, keep=tuning)
        batch = {"on_epoch": True, "prog_bar": stage == "val", "batch_size": len(targets)}
        self.log(f"{stage}/{LOSS}", self.multilabel.losses[stage], **batch)
        self.log_dict(self.multilabel.ranking[stage], **batch)
        self.log_dict(self.multilabel.decisions[stage], **batch)
        self.log(f"{stage}/{SAMPLES}", float(len(targets)), on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)
        return {"probs": probs, "targets": targets, "indices": indices}

    def on_validation_epoch_end(self) -> None:
        """A multi-label model tunes its thresholds on this validation's photos (during ``fit``)."""
        if self.multilabel is not None:
            self.multilabel.tune_thresholds()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """For each good image: its path, the top-k class names and their probabilities; a multi-label
        model also answers its label set (``labels``, ``label_probs``) at the stored thresholds, and a
        calibrated one what ``answers`` adds (``gem_lightning.inference.answers``: a prediction set, "unknown")."""
        rows = []
        if len(batch["path"]):
            probs = self.predict_proba(batch["image"])
            top_probs, top_labels = probs.topk(min(self.hparams.top_k, self.num_classes), dim=-1)
            sets = label_sets(probs, self.multilabel.thresholds) if self.multilabel is not None else None
            for row, (path, index, labels, values) in enumerate(
                zip(batch["path"], batch["index"], top_labels.tolist(), top_probs.tolist())
            ):
                answer = {"index": index, "path": path, "classes": [self.class_names[i] for i in labels], "probs": values}
                if sets is not None:
                    answer["labels"] = [self.class_names[i] for i in sets[row]]
                    answer["label_probs"] = probs[row, sets[row]].tolist()
                rows.append(answer)
            for row, answer in zip(rows, self.answers(probs) if self.answers is not None else ()):
                row.update(answer)
        return {"predictions": rows, "rejected": batch["rejected"]}

    # Optimisation ----------------------------------------------------------------------------

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The backbone's parameters, then the classifier head's: two optimizer groups, so the
        backbone can learn at ``backbone_lr_ratio`` times the head's rate."""
        head = {id(p) for p in self.network_spec.classifier(self.model.network).parameters()}
        backbone = [p for p in self.parameters() if id(p) not in head]
        return [{"params": backbone, "name": "backbone"}, {"params": [p for p in self.parameters() if id(p) in head], "name": "head"}]

    def configure_optimizers(self) -> Any:
        try:
            optimizer = self.optimizer(self.parameter_groups())
        except ValueError as error:  # torch.optim's own checks: "Invalid learning rate: -1.0"
            raise UserInputError(f"model.optimizer: {error}.") from error
        optimizer.param_groups[0]["lr"] *= self.hparams.backbone_lr_ratio
        if self.lr_scheduler is None:
            return optimizer
        try:
            scheduler = self.lr_scheduler(optimizer)
        except ValueError as error:
            raise UserInputError(f"model.lr_scheduler: {error}.") from error
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and self.hparams.backbone_lr_ratio != 1:
            raise UserInputError(
                "OneCycleLR sets one max_lr for every layer, so model.backbone_lr_ratio would be lost: use "
                "gem_lightning.training.schedules.WarmupCosineLR (warmup_fraction 0.3 is the one-cycle shape)."
            )
        if getattr(scheduler, "steps_per_run", False):
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        stepwise = getattr(scheduler, "steps_per_run", False) or isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
        interval = "step" if stepwise else "epoch"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": self.monitor}}
