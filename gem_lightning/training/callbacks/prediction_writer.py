"""Write ``predict`` results to CSV or JSON lines as they come, so a crash keeps the rows done."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from gem_lightning.errors import UserInputError
from gem_lightning.files import atomic_write
from gem_lightning.reports.prediction_grid import write_prediction_grid

MULTILABEL_COLUMNS = ("labels", "label_probs")
ANSWER_COLUMNS = ("prediction_set", "unknown", "unknown_score")
"""What ``inference.coverage`` and ``inference.unknown`` add to each row (``gem_lightning.inference.answers``)."""


class PredictionWriter(BasePredictionWriter):
    """Streams each batch's predictions to a per-process part file, then merges them in input order.

    Every row is flushed as soon as its batch is done; at the end the parts are merged (by input
    index, so the order is deterministic under DDP) into ``output`` and removed. Files that could
    not be read are listed with their reasons in ``<output stem>.rejected.csv``.

    Earlier predictions are never replaced silently: when ``output`` (or the rejects list or the
    grid beside it) already exists, ``predict`` stops before running the model, unless ``overwrite``.

    Args:
        output: the predictions file; default ``predictions.<format>`` in the run's log folder.
        format: ``csv`` or ``jsonl``.
        overwrite: replace an existing ``output`` and the files written beside it.
    """

    def __init__(self, output: str | None = None, format: Literal["csv", "jsonl"] = "csv", overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        if format not in ("csv", "jsonl"):
            raise ValueError(f"predictions.format must be 'csv' or 'jsonl', got {format!r}.")
        self.output = output
        self.format = format
        self.overwrite = overwrite
        self.path: Path | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        log_dir = trainer.log_dir or trainer.default_root_dir
        self.path = Path(self.output) if self.output else Path(log_dir) / f"predictions.{self.format}"
        self.rank = trainer.global_rank
        self._refuse_to_overwrite()
        try:
            self._part(self.rank).parent.mkdir(parents=True, exist_ok=True)
            self._part(self.rank).write_text("")
            self._rejects_part(self.rank).write_text("")
        except OSError as error:
            raise UserInputError(
                f"predictions.output {str(self.path)!r} cannot be written: {error.strerror or error} "
                f"({error.filename or self.path.parent}). Choose another --predictions.output."
            ) from error

    def _refuse_to_overwrite(self) -> None:
        if self.path.is_dir():
            raise UserInputError(
                f"predictions.output {str(self.path)!r} is a folder; give a file name, e.g. {str(self.path / self.path.name)}.csv."
            )
        existing = [path for path in (self.path, self.rejected_path, self.grid_path) if path.exists()]
        if existing and not self.overwrite:
            raise UserInputError(
                f"predictions.output {str(self.path)!r}: {', '.join(repr(str(p)) for p in existing)} already "
                "exist(s) and would be replaced. Choose another --predictions.output, or add --predictions.overwrite true."
            )

    def _part(self, rank: int) -> Path:
        return self.path.with_name(f".{self.path.name}.part-{rank}")

    def _rejects_part(self, rank: int) -> Path:
        return self.path.with_name(f".{self.path.name}.rejected-{rank}")

    @property
    def rejected_path(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.rejected.csv")

    @property
    def grid_path(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.grid.png")

    @override
    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        with self._part(self.rank).open("a") as part:
            for row in prediction["predictions"]:
                part.write(json.dumps(row) + "\n")
        with self._rejects_part(self.rank).open("a") as part:
            for index, path, reason in prediction["rejected"]:
                part.write(json.dumps({"index": index, "path": path, "reason": reason}) + "\n")

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            ranks = range(trainer.world_size)
            rows = sorted(_read_jsonl(self._part(r) for r in ranks), key=lambda row: row["index"])
            rejects = sorted(_read_jsonl(self._rejects_part(r) for r in ranks), key=lambda row: row["index"])
            self._write_predictions(rows)
            if self.format == "csv" and rows:
                grid = write_prediction_grid(self.path, self.grid_path, pl_module.class_names)
                rank_zero_info(f"Drew a grid of predictions in {grid}")
            self._write_rejects(rejects)
            for rank in ranks:
                self._part(rank).unlink(missing_ok=True)
                self._rejects_part(rank).unlink(missing_ok=True)
            rank_zero_info(f"Wrote {len(rows)} predictions to {self.path}")
            if rejects:
                rank_zero_warn(f"{len(rejects)} file(s) could not be read; they are listed with reasons in {self.rejected_path}")
        trainer.strategy.barrier()

    def _write_predictions(self, rows: list[dict]) -> None:
        """``path``, a multi-label model's label set (``labels``, ``label_probs``), the ranked classes
        and probabilities, then what ``inference.coverage`` and ``inference.unknown`` add
        (``prediction_set``, ``unknown``, ``unknown_score``; with them, ``prediction`` is ``unknown``
        for a photo unlike every class)."""
        extra = [key for key in ANSWER_COLUMNS if rows and key in rows[0]]
        with atomic_write(self.path, "w", what="the predictions", newline="") as file:
            if self.format == "jsonl":
                for row in rows:
                    file.write(json.dumps({key: value for key, value in row.items() if key != "index"}) + "\n")
            else:
                k = max((len(row["classes"]) for row in rows), default=0)
                labels = [key for key in MULTILABEL_COLUMNS if rows and key in rows[0]]
                writer = csv.writer(file)
                header = ["path", *labels, "prediction", "probability"]
                writer.writerow(header + [f"{kind}_{i}" for i in range(1, k + 1) for kind in ("class", "prob")] + extra)
                for row in rows:
                    ranked = [value for pair in zip(row["classes"], (f"{p:.6f}" for p in row["probs"])) for value in pair]
                    prediction = [row.get("prediction", row["classes"][0]), f"{row['probs'][0]:.6f}"]
                    writer.writerow(
                        [row["path"], *(_cell(row[key]) for key in labels), *prediction, *ranked, *(_cell(row[key]) for key in extra)]
                    )

    def _write_rejects(self, rejects: list[dict]) -> None:
        if not rejects:
            self.rejected_path.unlink(missing_ok=True)
            return
        with self.rejected_path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows([row["path"], row["reason"]] for row in rejects)


def _cell(value: Any) -> str:
    """A CSV cell: a list (a set of classes, their probabilities) joined by ``;``, ``true``/``false``,
    a probability or score to 6 decimals."""
    if isinstance(value, list):
        return ";".join(_cell(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _read_jsonl(paths) -> list[dict]:
    rows = []
    for path in paths:
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    return rows
