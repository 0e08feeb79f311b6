"""Copy a checkpoint written before checkpoints recorded their training photos, adding the record its
``fit`` would have written: the training split of its own data settings (``data_dir``,
``val_fraction``, ``seed``, ``corrections``), split again by the same code.

Only right when the folder is unchanged since that fit (a photo added or removed moves others across
the split), which is why ``calibrate`` never does it itself and asks for ``--trust_split`` instead.
For the benchmarks (docs/answers.md), whose photos are read-only:

    python benchmarks/record_training_split.py --ckpt old.ckpt --output recorded.ckpt [--data_dir <if moved>]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gem_lightning.data.cache import Cache
from gem_lightning.data.datamodule import GemDataModule
from gem_lightning.data.loader import Loader
from gem_lightning.training.checkpoints import load_checkpoint
from gem_lightning.training.combine import DATA_STATE, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data_dir", type=Path, default=None, help="the training folder, if it moved since the fit")
    args = parser.parse_args()
    checkpoint = dict(load_checkpoint(args.ckpt))
    data = checkpoint["datamodule_hyper_parameters"]
    settings = {key: data[key] for key in ("image_size", "val_fraction", "seed", "autocrop", "background", "corrections")}
    datamodule = GemDataModule(str(args.data_dir or data["data_dir"]), **settings, loader=Loader(num_workers=0), cache=Cache(mode="disk"))
    datamodule.setup("fit")
    checkpoint[DATA_STATE] = datamodule.state_dict()
    save_checkpoint(checkpoint, args.output)
    print(f"Wrote {args.output}: {len(datamodule.source.records['train'])} training photos recorded.")


if __name__ == "__main__":
    main()
