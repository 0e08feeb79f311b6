"""Multi-label gemstones: build pictures of 1-3 stones from the real photos, and score checkpoints on them.

Run from the repository root (writes a data set outside the repository, prints figures; not a test):

    python benchmarks/multilabel_gems.py generate --source ../shared/datasets/gemstones --output /work/data/multigems \
        [--train_images 2500 --test_images 600 --val_images 0 --size 320 --seed 0]
    python benchmarks/multilabel_gems.py measure --set /work/data/multigems/labels.csv --multi MULTI.ckpt --single SINGLE.ckpt \
        [--tune_images 500] [--seed 0] [--device cpu]

``generate``: each picture shows k = 1, 2 or 3 stones (uniform), k distinct classes, one photo each,
on a white square: k=1 fills the canvas, k=2 two halves side by side, k=3 three cells of a 2x2 grid
(the empty cell drawn at random). Three columns would leave a square photo a third of the side (53 px
at a 160 px model input), the grid half of it (80 px, as for k=2). Classes are drawn least-used first
(ties at random), so every class appears about equally often; each class's photos are dealt from a
shuffled deck. Train pictures use only ``train/`` photos, test pictures only ``test/`` photos, leaving
out the test photos whose bytes also lie in ``train/`` (the set's leaks). ``--val_images`` (default 0:
the data module draws validation from the train rows) writes ``val`` pictures from 5 photos a class
kept out of the train pictures, so thresholds tuned on them are tuned on photos no train picture shows.
Writes ``<output>/<split>/<n>.jpg`` (JPEG quality 92) and ``<output>/labels.csv`` (``path,labels,split``).

``coverage``: on the ``test`` rows, what a calibrated multi-label checkpoint's label sets hold
(``python main.py calibrate`` on the set's ``val`` rows, then ``--inference.coverage``): for each
promise, the mean share of a picture's true labels its set holds (the promise), the mean set size,
and the pictures whose set holds all their labels. Through the Python API (``load_model(...,
coverage=c)``), with the checkpoint's own test-time augmentation:

    python benchmarks/multilabel_gems.py coverage --set /work/data/multigems_val/labels.csv --calibrated CALIBRATED.ckpt

``measure``: on the ``test`` rows, macro mAP, micro mAP and macro F1 (torchmetrics) of (a) the
multi-label checkpoint's sigmoid probabilities at its stored per-label thresholds and (b) the
baseline, the single-label checkpoint's softmax probabilities as label scores, with a threshold per
label chosen for F1 on the ``val`` rows, else on ``--tune_images`` train rows drawn at random.
Each picture is decoded as ``predict`` decodes it for that checkpoint (:class:`Preprocessing`: its own
image size, auto-crop and background); train both at the same ``--data.image_size`` to compare like with like.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score
from torchmetrics.functional.classification import binary_precision_recall_curve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_lightning.data.images import load_rgb  # noqa: E402
from gem_lightning.errors import UserInputError  # noqa: E402
from gem_lightning.inference.preprocessing import Preprocessing  # noqa: E402
from gem_lightning.training.checkpoints import load_checkpoint  # noqa: E402
from gem_lightning.training.module import GemClassifier  # noqa: E402

WHITE = (255, 255, 255)
VAL_PHOTOS_PER_CLASS = 5
JPEG_QUALITY = 92
MAX_REDRAWS = 1000
Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)`` of a cell, in px."""

# --------------------------------------------------------------------------- generate


def digest(path: Path) -> str:
    """The file's bytes, hashed: equal digests mean the same photo."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def class_photos(split_dir: Path) -> dict[str, list[Path]]:
    """Each class folder's photos, sorted by name."""
    if not split_dir.is_dir():
        raise UserInputError(f"--source has no folder {split_dir}: it needs train/<class>/ and test/<class>/ photo folders.")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {f.name: [p for p in sorted(f.iterdir()) if p.is_file() and not p.name.startswith(".")] for f in folders}


def without_leaks(test: dict[str, list[Path]], train: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """``test`` less the photos whose bytes are also in ``train``, saying how many it left out."""
    seen = {digest(photo) for photos in train.values() for photo in photos}
    kept = {name: [photo for photo in photos if digest(photo) not in seen] for name, photos in test.items()}
    before, after = sum(map(len, test.values())), sum(map(len, kept.values()))
    print(f"test/: {after} photos kept, {before - after} left out (their bytes are also in train/)")
    return kept


class Deck:
    """Deals a class's photos in shuffled order, reshuffling when all have been dealt, so each is used about equally."""

    def __init__(self, photos: list[Path], rng: random.Random) -> None:
        self.photos, self.rng, self.left = photos, rng, []

    def deal(self) -> Path:
        if not self.left:
            self.left = self.rng.sample(self.photos, len(self.photos))
        return self.left.pop()


def cell_boxes(k: int, size: int, rng: random.Random) -> list[Box]:
    """The cells of a picture of ``k`` stones (see the module docstring)."""
    half = size // 2
    if k == 1:
        return [(0, 0, size, size)]
    if k == 2:
        return [(0, 0, half, size), (half, 0, size, size)]
    grid = [(x, y, x + half, y + half) for y in (0, half) for x in (0, half)]
    grid.pop(rng.randrange(4))
    return grid


def compose(photos: Sequence[Path], boxes: Sequence[Box], size: int) -> Image.Image:
    """The photos scaled to fit their cells (aspect kept), centred in them, on a white square."""
    canvas = Image.new("RGB", (size, size), WHITE)
    for photo, (left, top, right, bottom) in zip(photos, boxes):
        image = ImageOps.contain(load_rgb(photo, WHITE, name=str(photo)), (right - left, bottom - top), Image.Resampling.LANCZOS)
        canvas.paste(image, (left + (right - left - image.width) // 2, top + (bottom - top - image.height) // 2))
    return canvas


def least_used(counts: Counter, classes: list[str], k: int, rng: random.Random) -> list[str]:
    """``k`` distinct classes, those used least so far first, ties broken at random."""
    return sorted(classes, key=lambda name: (counts[name], rng.random()))[:k]


def draw(k: int, counts: Counter, decks: dict[str, Deck], size: int, rng: random.Random) -> tuple[tuple[Path, ...], tuple[Box, ...]]:
    """One picture's photos (``k`` classes, used least so far, in random order) and their cells."""
    names = least_used(counts, sorted(decks), k, rng)
    return tuple(decks[name].deal() for name in rng.sample(names, k)), tuple(cell_boxes(k, size, rng))


def make_pictures(photos: dict[str, list[Path]], split: str, count: int, output: Path, size: int, rng: random.Random) -> list[dict]:
    """Write ``count`` pictures of ``split`` under ``output/split/``; return their ``labels.csv`` rows.

    A picture whose photos and cells repeat an earlier one is drawn again (same k), so no two files are the same.
    """
    decks = {name: Deck(paths, rng) for name, paths in photos.items() if paths}
    counts, seen, rows = Counter(), set(), []
    (output / split).mkdir(parents=True, exist_ok=True)
    while len(rows) < count:
        k = rng.choice((1, 2, 3))
        picture = draw(k, counts, decks, size, rng)
        for _ in range(MAX_REDRAWS):
            if picture not in seen:
                break
            picture = draw(k, counts, decks, size, rng)
        else:
            raise UserInputError(f"--{split}_images {count}: after {len(rows)}, no new picture of {k} stones can be drawn; ask for fewer.")
        seen.add(picture)
        photos_used, boxes = picture
        names = sorted(photo.parent.name for photo in photos_used)  # a photo's class is its folder
        counts.update(names)
        path = f"{split}/{len(rows):05d}.jpg"
        compose(photos_used, boxes, size).save(output / path, quality=JPEG_QUALITY)
        rows.append({"path": path, "labels": ";".join(names), "split": split})
    return rows


def split_off_val(photos: dict[str, list[Path]], rng: random.Random) -> dict[str, list[Path]]:
    """Take :data:`VAL_PHOTOS_PER_CLASS` photos a class out of ``photos`` (in place) and return them."""
    val = {}
    for name, paths in photos.items():
        val[name] = rng.sample(paths, min(VAL_PHOTOS_PER_CLASS, len(paths) - 1))
        photos[name] = [p for p in paths if p not in val[name]]
    return val


def print_counts(rows: list[dict]) -> None:
    """Per split: pictures, stones a picture, and how often each class appears (fewest, median, most)."""
    for split in ("train", "val", "test"):
        labels = [row["labels"].split(";") for row in rows if row["split"] == split]
        if not labels:
            continue
        per_class = Counter(name for names in labels for name in names)
        fewest = min(per_class.items(), key=lambda item: item[1])
        stones = Counter(len(names) for names in labels)
        print(
            f"{split}: {len(labels)} pictures ({', '.join(f'{stones[k]} with {k}' for k in (1, 2, 3))} stones); "
            f"{len(per_class)} classes, each in {fewest[1]}-{max(per_class.values())} pictures "
            f"(median {statistics.median(per_class.values()):g}; fewest: {fewest[0]})"
        )


def generate(args: argparse.Namespace) -> None:
    """Write the pictures and ``labels.csv`` (see the module docstring)."""
    source, output = Path(args.source), Path(args.output).resolve()
    if any(output == root or root in output.parents for root in (REPO, source.resolve())):
        raise UserInputError(f"--output {output} lies in the repository or in --source: write the set elsewhere.")
    if output.exists() and any(output.iterdir()):
        raise UserInputError(f"--output {output} is not empty: give a new or empty folder.")
    if args.size < 32 or min(args.train_images, args.test_images) < 1 or args.val_images < 0:
        raise UserInputError("--size must be 32 or more, --train_images and --test_images 1 or more, --val_images 0 or more.")
    rng = random.Random(args.seed)
    train = class_photos(source / "train")
    test = without_leaks(class_photos(source / "test"), train)
    val = split_off_val(train, rng) if args.val_images else {}
    rows = make_pictures(train, "train", args.train_images, output, args.size, rng)
    rows += make_pictures(val, "val", args.val_images, output, args.size, rng) if val else []
    rows += make_pictures(test, "test", args.test_images, output, args.size, rng)
    with (output / "labels.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["path", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    print_counts(rows)
    print(f"wrote {len(rows)} pictures and {output / 'labels.csv'}")


# --------------------------------------------------------------------------- measure


def read_set(labels_csv: Path) -> list[dict]:
    """The rows of a ``path,labels,split`` labels file, paths made absolute."""
    if not labels_csv.is_file():
        raise UserInputError(f"--set {labels_csv} is not a file: give the labels.csv that `generate` wrote.")
    with labels_csv.open(newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or not {"path", "labels", "split"} <= set(rows[0]):
        raise UserInputError(f"--set {labels_csv} needs the columns path,labels,split and at least one row.")
    return [{**row, "path": labels_csv.parent / row["path"], "labels": row["labels"].split(";")} for row in rows]


def load_classifier(ckpt: str, multilabel: bool, option: str) -> GemClassifier:
    """The checkpoint's module in eval mode, refused in one line when its task is not the one expected."""
    load_checkpoint(ckpt)
    model = GemClassifier.load_from_checkpoint(Path(ckpt), map_location="cpu").eval()
    task = model.hparams.get("task", "multiclass")
    if (task == "multilabel") != multilabel:
        raise UserInputError(
            f"{option} {ckpt} is a {task} checkpoint; {option} takes a {'multilabel' if multilabel else 'multiclass'} one."
        )
    return model


def label_columns(model: GemClassifier, names: list[str], option: str) -> list[int]:
    """Where each of the set's class ``names`` sits among the model's outputs."""
    missing = sorted(set(names) - set(model.class_names))
    if missing:
        raise UserInputError(f"{option} checkpoint has no class {missing[0]!r} (and {len(missing) - 1} more) that --set names.")
    return [model.class_names.index(name) for name in names]


@torch.inference_mode()
def label_scores(model: GemClassifier, columns: list[int], rows: list[dict], device: str) -> torch.Tensor:
    """``(N, L)`` scores, the model's probabilities (sigmoid or softmax) of the set's labels, by batches of 32."""
    preprocess = Preprocessing.from_hparams(model.hparams)
    model.to(device)
    batches = [rows[start : start + 32] for start in range(0, len(rows), 32)]
    scores = [model.predict_proba(torch.stack([preprocess(row["path"]) for row in batch]).to(device)).float().cpu() for batch in batches]
    return torch.cat(scores)[:, columns]


def targets(rows: list[dict], names: list[str]) -> torch.Tensor:
    """``(N, L)`` 0/1 matrix of each row's labels."""
    index = {name: i for i, name in enumerate(names)}
    truth = torch.zeros(len(rows), len(names), dtype=torch.long)
    for r, row in enumerate(rows):
        truth[r, [index[name] for name in row["labels"]]] = 1
    return truth


def f1_thresholds(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per label, the score threshold with the best F1 on these pictures (0.5 for a label they lack)."""
    thresholds = torch.full((scores.shape[1],), 0.5)
    for j in range(scores.shape[1]):
        if truth[:, j].any():
            precision, recall, cuts = binary_precision_recall_curve(scores[:, j], truth[:, j])
            f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp_min(1e-12)
            thresholds[j] = cuts[f1.argmax()]
    return thresholds


def metrics(scores: torch.Tensor, truth: torch.Tensor, thresholds: torch.Tensor) -> dict[str, float]:
    """Macro and micro mAP of the scores, macro F1 of the scores binarised at ``thresholds``, in %."""
    labels = truth.shape[1]
    return {
        "macro mAP": 100 * MultilabelAveragePrecision(num_labels=labels, average="macro")(scores, truth).item(),
        "micro mAP": 100 * MultilabelAveragePrecision(num_labels=labels, average="micro")(scores, truth).item(),
        "macro F1": 100 * MultilabelF1Score(num_labels=labels, average="macro")((scores >= thresholds).float(), truth).item(),
    }


def tuning_rows(rows: list[dict], count: int, seed: int) -> tuple[list[dict], str]:
    """The pictures the baseline's thresholds are tuned on, and a line saying which."""
    val = [row for row in rows if row["split"] == "val"]
    if val:
        return val, f"the {len(val)} val pictures (photos no train picture shows)"
    train = [row for row in rows if row["split"] == "train"]
    picked = random.Random(seed).sample(train, min(count, len(train)))
    return picked, f"{len(picked)} train pictures drawn at random (the single-label model trained on their photos, one by one)"


def multi_label_figures(model: GemClassifier, args: argparse.Namespace, names: list[str], test: list[dict]) -> dict[str, float]:
    """The multi-label checkpoint's figures: its sigmoid probabilities, binarised at its stored thresholds."""
    columns = label_columns(model, names, "--multi")
    print(f"multi-label input side: {model.hparams.image_size} px")
    scores = label_scores(model, columns, test, args.device)
    return metrics(scores, targets(test, names), model.multilabel.thresholds.float().cpu()[columns])


def baseline_figures(
    model: GemClassifier, args: argparse.Namespace, names: list[str], test: list[dict], tune: list[dict]
) -> dict[str, float]:
    """The single-label checkpoint's figures: its softmax probabilities, binarised at thresholds tuned on ``tune``."""
    columns = label_columns(model, names, "--single")
    print(f"baseline input side: {model.hparams.image_size} px")
    thresholds = f1_thresholds(label_scores(model, columns, tune, args.device), targets(tune, names))
    return metrics(label_scores(model, columns, test, args.device), targets(test, names), thresholds)


def measure(args: argparse.Namespace) -> None:
    """Print the multi-label checkpoint's and the baseline's figures on the set's test pictures."""
    rows = read_set(Path(args.set))
    test = [row for row in rows if row["split"] == "test"]
    if not test:
        raise UserInputError(f"--set {args.set} has no rows with split test.")
    names = sorted({name for row in rows for name in row["labels"]})
    multi, single = load_classifier(args.multi, True, "--multi"), load_classifier(args.single, False, "--single")
    tune, tuned_on = tuning_rows(rows, args.tune_images, args.seed)
    results = {
        "multi-label": multi_label_figures(multi, args, names, test),
        "single-label baseline": baseline_figures(single, args, names, test, tune),
    }
    print_results(results, len(test), len(names), tuned_on)


@torch.inference_mode()
def coverage(args: argparse.Namespace) -> None:
    """Print what the calibrated checkpoint's label sets hold on the set's test pictures, per promise."""
    from gem_lightning.inference.api import load_model

    test = [row for row in read_set(Path(args.set)) if row["split"] == "test"]
    promises = [float(value) for value in args.coverages.split(",")]
    models = {promise: load_model(args.calibrated, coverage=promise) for promise in promises}
    first = models[promises[0]]
    probs = torch.cat(
        [
            first.predict_proba(torch.stack([first.preprocess(row["path"]) for row in test[start : start + 32]]))
            for start in range(0, len(test), 32)
        ]
    )
    print(f"{len(test)} test pictures, {statistics.mean(len(row['labels']) for row in test):.2f} labels each; {args.calibrated}")
    print(
        "| promise | true labels held (mean share) | mean set size | pictures with every label held | empty sets |\n|---|---|---|---|---|"
    )
    for promise, model in models.items():
        sets = [set(answer["prediction_set"]) for answer in model.answers(probs)]
        held = [len(chosen & set(row["labels"])) / len(row["labels"]) for chosen, row in zip(sets, test)]
        print(
            f"| {promise} | {statistics.mean(held):.3f} | {statistics.mean(map(len, sets)):.2f} | "
            f"{sum(share == 1 for share in held) / len(held):.3f} | {sum(not chosen for chosen in sets) / len(sets):.3f} |"
        )


def print_results(results: dict[str, dict[str, float]], pictures: int, labels: int, tuned_on: str) -> None:
    """The figures as a Markdown table, with their difference and the issue's target."""
    multi, baseline = results.values()
    columns = list(multi)
    print(f"{pictures} test pictures, {labels} labels; baseline thresholds tuned for F1 on {tuned_on}.")
    print("| model | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for name, figures in results.items():
        print(f"| {name} | " + " | ".join(f"{figures[c]:.2f}" for c in columns) + " |")
    print("| difference | " + " | ".join(f"{multi[c] - baseline[c]:+.2f}" for c in columns) + " |")
    gain = multi["macro mAP"] - baseline["macro mAP"]
    print(f"target (multi-label >= baseline + 5 points of macro mAP): {'met' if gain >= 5 else 'not met'} ({gain:+.2f})")


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write the pictures and labels.csv")
    make.add_argument("--source", required=True, help="the gemstones folder (train/<class>/, test/<class>/)")
    make.add_argument("--output", required=True, help="a new or empty folder outside the repository")
    make.add_argument("--train_images", type=int, default=2500)
    make.add_argument("--test_images", type=int, default=600)
    make.add_argument("--val_images", type=int, default=0, help="val pictures from 5 train/ photos a class kept apart (0: none)")
    make.add_argument("--size", type=int, default=320, help="side of the square pictures, px")
    make.add_argument("--seed", type=int, default=0)
    score = commands.add_parser("measure", help="score a multi-label checkpoint and the single-label baseline")
    score.add_argument("--set", required=True, help="the labels.csv that generate wrote")
    score.add_argument("--multi", required=True, help="multi-label checkpoint")
    score.add_argument("--single", required=True, help="single-label checkpoint (the baseline)")
    score.add_argument("--tune_images", type=int, default=500, help="train pictures for the baseline's thresholds when the set has no val")
    score.add_argument("--seed", type=int, default=0, help="draws the --tune_images pictures")
    score.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sets = commands.add_parser("coverage", help="what a calibrated multi-label checkpoint's label sets hold on the test pictures")
    sets.add_argument("--set", required=True, help="the labels.csv that generate wrote")
    sets.add_argument("--calibrated", required=True, help="a multi-label checkpoint written by `python main.py calibrate`")
    sets.add_argument("--coverages", default="0.8,0.9,0.95", help="the promises, comma-separated")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        {"generate": generate, "measure": measure, "coverage": coverage}[args.command](args)
    except UserInputError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
