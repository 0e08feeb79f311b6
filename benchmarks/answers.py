"""Measure a calibrated checkpoint's prediction sets, "unknown" answers and calibration on held-out photos.

    python benchmarks/unknown_photos.py --out runs/unknown_photos
    python benchmarks/answers.py --ckpt <trained.ckpt> --calibrated <calibrated.ckpt> \\
        --test_dir ../shared/datasets/gemstones/test --unknown_dir runs/unknown_photos \\
        --data_dir ../shared/datasets/gemstones

Prints markdown tables:

- prediction sets on ``test_dir``: coverage and set size at 0.8, 0.9 and 0.95, with the checkpoint's
  RAPS penalty and with none (APS), from its calibration record;
- "unknown": for every score the checkpoint holds, the AUROC of test photos against the photos of
  ``unknown_dir`` (``<kind>/*``), the share of those rejected and of test photos falsely rejected at
  the checkpoint's 5 % threshold (set on its held-out photos), and the share rejected at exactly 5 %
  false rejection of the test photos; then, for each score, the share rejected per kind of photo;
- expected calibration error and accuracy on ``test_dir`` before (``--ckpt``) and after calibration;
- with ``--data_dir``: RAPS penalties tried on the checkpoint's own validation split (calibrated on one
  half, measured on the other, 50 random halves), which is how the default penalty was chosen.

Every number comes from one forward pass per photo (the checkpoint's test-time augmentation), with
the functions ``predict``, ``serve`` and the API answer with; a few photos are checked against
``load_model(...).answer`` itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from gem_lightning.data.cache import Cache
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.loader import Loader
from gem_lightning.inference.answers import PREFERRED_SCORES
from gem_lightning.inference.api import GemModel, load_model
from gem_lightning.inference.onnx_model import file_sha256
from gem_lightning.models.features import PenultimateTap, view_count
from gem_lightning.training.calibration import expected_calibration_error, with_temperature
from gem_lightning.training.checkpoints import load_checkpoint
from gem_lightning.training.conformal import conformal_threshold, prediction_sets, raps_scores, true_class_standing
from gem_lightning.training.unknown import rejection_threshold, unknown_scores

COVERAGES = (0.8, 0.9, 0.95)
RATE = 0.05
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class Measurements:
    """:func:`measure`'s results kept in ``path`` (``--cache``), for the weights of ``ckpt`` and its test-time
    augmentation: a rerun after calibrating again measures nothing (probabilities follow the new temperature)."""

    def __init__(self, path: Path | None, ckpt: Path, model: GemModel) -> None:
        self.path, self.model = path, model
        self.identity = {"ckpt": file_sha256(ckpt), "tta": model.classifier.model.tta}
        kept = torch.load(path, weights_only=True) if path is not None and path.exists() else {}
        self.kept = kept if kept.get("identity") == self.identity else {"identity": self.identity}

    def __call__(self, name: str, paths: list[Path]) -> dict[str, torch.Tensor]:
        temperature = float(self.model.classifier.hparams.temperature)
        found = self.kept.get(name)
        if found is None or found["paths"] != [str(p) for p in paths]:
            found = {**measure(self.model, paths), "paths": [str(p) for p in paths], "temperature": temperature}
            self.kept[name] = found
            if self.path is not None:
                torch.save(self.kept, self.path)
        probs = with_temperature(found["probs"], temperature / found["temperature"])
        return {"probs": probs, "features": found["features"], "logits": found["logits"]}


@torch.inference_mode()
def measure(model: GemModel, paths: list[Path], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Calibrated probabilities, logits and penultimate features of ``paths``, one forward pass each."""
    tap = PenultimateTap(model.classifier.network_spec, model.classifier.model.network)
    kept = []
    try:
        for start in range(0, len(paths), batch_size):
            probs = model.predict_proba(torch.stack([model.preprocess(p) for p in paths[start : start + batch_size]])).float().cpu()
            kept.append((probs, *(t.cpu() for t in tap.take(view_count(model.classifier.model.tta)))))
    finally:
        tap.close()
    probs, features, logits = (torch.cat(column) for column in zip(*kept))
    return {"probs": probs, "features": features, "logits": logits}


def labels_of(paths: list[Path], class_names: list[str]) -> torch.Tensor:
    return torch.tensor([class_names.index(p.parent.name) for p in paths])


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(an unknown photo scores above a test photo), ties counted half (Mann-Whitney)."""
    greater = (out_scores[:, None] > in_scores[None, :]).double().mean()
    ties = (out_scores[:, None] == in_scores[None, :]).double().mean()
    return float(greater + ties / 2)


def set_table(record: dict, probs: torch.Tensor, labels: torch.Tensor) -> list[str]:
    conformal = record["conformal"]
    rows = ["| method | promise | coverage | mean set size | median | largest | sets of one |", "|---|---|---|---|---|---|---|"]
    for name, lam, k_reg in ((f"RAPS (lambda {conformal['lambda']}, k_reg {conformal['k_reg']})", conformal["lambda"],
                              conformal["k_reg"]), ("APS", 0.0, 1)):  # fmt: skip
        scores = raps_scores(conformal["mass_above"], conformal["rank"], lam, k_reg)
        for coverage in COVERAGES:
            sets = prediction_sets(probs, conformal_threshold(scores, coverage), lam, k_reg)
            sizes = np.array([len(s) for s in sets])
            hit = np.mean([int(y) in s for s, y in zip(sets, labels.tolist())])
            rows.append(f"| {name} | {coverage:.2f} | {hit:.3f} | {sizes.mean():.2f} | {np.median(sizes):.0f} | {sizes.max()} | "
                        f"{(sizes == 1).mean():.2f} |")  # fmt: skip
    return rows


def unknown_tables(record: dict, test: dict, unknown: dict, kinds_of_photos: list[str]) -> list[str]:
    held = record["unknown"]["held_out"]
    statistics = {name: record["unknown"][name] for name in ("mahalanobis", "knn") if name in record["unknown"]}
    scored = {
        side: unknown_scores(tuple(held), statistics, data["probs"], data["logits"], data["features"])
        for side, data in (("test", test), ("unknown", unknown))
    }
    rows = [
        f"| score | AUROC | rejected at the checkpoint's {RATE:.0%} threshold | test photos rejected there | "
        f"rejected at exactly {RATE:.0%} of test/ rejected |",
        "|---|---|---|---|---|",
    ]
    categories = sorted(set(kinds_of_photos))
    per_kind = [f"| score | {' | '.join(f'{c} ({kinds_of_photos.count(c)})' for c in categories)} |", "|---|" + "---|" * len(categories)]
    kind_array = np.array(kinds_of_photos)
    for kind in held:
        inside, outside = scored["test"][kind], scored["unknown"][kind]
        threshold = rejection_threshold(held[kind], RATE)
        at_test_rate = torch.quantile(inside.double(), 1 - RATE)
        rows.append(f"| {kind} | {auroc(inside, outside):.3f} | {(outside > threshold).float().mean():.3f} | "
                    f"{(inside > threshold).float().mean():.3f} | {(outside.double() > at_test_rate).float().mean():.3f} |")  # fmt: skip
        rejected = (outside > threshold).numpy()
        per_kind.append(f"| {kind} | " + " | ".join(f"{rejected[kind_array == c].mean():.2f}" for c in categories) + " |")
    return rows + ["", f"Share rejected per kind of photo, at the checkpoint's {RATE:.0%} threshold:", ""] + per_kind


def penalty_sweep(probs: torch.Tensor, labels: torch.Tensor, repeats: int = 50) -> list[str]:
    """Mean set size and coverage at 0.9 for RAPS penalties, calibrated on half the photos, measured on the rest."""
    rows = ["| lambda | k_reg | coverage at 0.9 | mean set size at 0.9 |", "|---|---|---|---|"]
    generator = torch.Generator().manual_seed(0)
    halves = [torch.randperm(len(labels), generator=generator) for _ in range(repeats)]
    for lam in (0.0, 0.001, 0.01, 0.05, 0.1, 0.2):
        for k_reg in (1, 2, 3, 5) if lam else (1,):
            hits, sizes = [], []
            for order in halves:
                fit, held = order[: len(order) // 2], order[len(order) // 2 :]
                threshold = conformal_threshold(raps_scores(*true_class_standing(probs[fit], labels[fit]), lam, k_reg), 0.9)
                sets = prediction_sets(probs[held], threshold, lam, k_reg)
                hits.append(np.mean([int(y) in s for s, y in zip(sets, labels[held].tolist())]))
                sizes.append(np.mean([len(s) for s in sets]))
            rows.append(f"| {lam} | {k_reg} | {np.mean(hits):.3f} | {np.mean(sizes):.2f} |")
    return rows


def validation_photos(ckpt: Path, data_dir: Path) -> list[Path]:
    """The photos of the validation split the checkpoint was trained with (its data module's settings)."""
    settings = load_checkpoint(ckpt)["datamodule_hyper_parameters"]
    decode = {key: settings[key] for key in ("image_size", "val_fraction", "seed", "autocrop", "background")}
    datamodule = GemDataModule(str(data_dir), **decode, loader=Loader(num_workers=0), cache=Cache(mode="disk"))
    datamodule.setup("fit")
    return datamodule.paths("val")


def check_against_the_api(calibrated: Path, paths: list[Path], probs: torch.Tensor, record: dict, kind: str, scores: torch.Tensor) -> str:
    """The benchmark's sets and unknown verdicts for ``paths`` equal what ``load_model(...).answer`` says."""
    model = load_model(calibrated, coverage=0.9, unknown=RATE, unknown_score=kind)
    conformal = record["conformal"]
    threshold = conformal_threshold(raps_scores(conformal["mass_above"], conformal["rank"], conformal["lambda"], conformal["k_reg"]), 0.9)
    sets = prediction_sets(probs, threshold, conformal["lambda"], conformal["k_reg"])
    unknown_threshold = rejection_threshold(record["unknown"]["held_out"][kind], RATE)
    for answer, chosen, score in zip(model.answer_many(paths), sets, scores.tolist()):
        expected = [] if score > unknown_threshold else [model.class_names[i] for i in chosen]
        assert answer.unknown == (score > unknown_threshold) and answer.prediction_set == expected, (answer, expected, score)
    return f"{len(paths)} photos answered by load_model(..., coverage=0.9, unknown={RATE}, unknown_score={kind!r}) as measured here."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="the checkpoint before calibration")
    parser.add_argument("--calibrated", type=Path, required=True, help="the checkpoint `main.py calibrate` wrote")
    parser.add_argument("--test_dir", type=Path, required=True, help="held-out photos in <Class>/ folders")
    parser.add_argument("--unknown_dir", type=Path, required=True, help="photos of none of the classes, in <kind>/ folders")
    parser.add_argument("--data_dir", type=Path, default=None, help="the training folder: the penalty sweep on its validation split")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="keep the network's outputs here, for reruns")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record = load_checkpoint(args.calibrated)["calibration"]
    model = load_model(args.calibrated)
    test_paths, unknown_paths = photos_in(args.test_dir), photos_in(args.unknown_dir)
    measured = Measurements(args.cache, args.ckpt, model)
    test, unknown = measured("test", test_paths), measured("unknown", unknown_paths)
    labels = labels_of(test_paths, model.class_names)
    before_t = float(load_checkpoint(args.ckpt)["hyper_parameters"].get("temperature", 1.0))
    after_t = float(model.classifier.hparams.temperature)
    before = with_temperature(test["probs"], before_t / after_t)
    print(f"# {args.calibrated.name}: {len(test_paths)} test photos, {len(unknown_paths)} photos of nothing; "
          f"calibrated on {record['photos']} photos ({record['held_out']}), tta {record['tta']}\n")  # fmt: skip
    print("## Prediction sets on the test photos\n\n" + "\n".join(set_table(record, test["probs"], labels)) + "\n")
    kinds = [p.relative_to(args.unknown_dir).parts[0] for p in unknown_paths]
    print("## Unknown: test photos against photos of nothing\n\n" + "\n".join(unknown_tables(record, test, unknown, kinds)) + "\n")
    accuracy = (test["probs"].argmax(1) == labels).float().mean()
    ece_before, ece_after = expected_calibration_error(before, labels), expected_calibration_error(test["probs"], labels)
    print(f"## Calibration on the test photos\n\nTop-1 accuracy {accuracy:.3f}; expected calibration error "
          f"{ece_before:.4f} (T = {before_t:.3f}) -> {ece_after:.4f} (T = {after_t:.3f}).\n")  # fmt: skip
    best = next(kind for kind in PREFERRED_SCORES if kind in record["unknown"]["held_out"])  # what unknown_score auto uses
    statistics = {name: record["unknown"][name] for name in ("mahalanobis", "knn") if name in record["unknown"]}
    few = list(range(0, len(test_paths), max(1, len(test_paths) // 8))) + [len(test_paths) + i for i in range(0, len(unknown_paths), 20)]
    paths = [(test_paths + unknown_paths)[i] for i in few]
    merged = {key: torch.cat([test[key], unknown[key]])[few] for key in test}
    scores = unknown_scores((best,), statistics, merged["probs"], merged["logits"], merged["features"])[best]
    print(check_against_the_api(args.calibrated, paths, merged["probs"], record, best, scores) + "\n")
    if args.data_dir is not None:
        val_paths = validation_photos(args.ckpt, args.data_dir)
        val = measured("val", val_paths)
        print(f"## RAPS penalty on the validation split ({len(val_paths)} photos; halves: calibrate / measure)\n")
        print("\n".join(penalty_sweep(val["probs"], labels_of(val_paths, model.class_names))) + "\n")
    print(f"({time.perf_counter() - started:.0f} s, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip


if __name__ == "__main__":
    main()
