"""Which photos a model was trained on: recorded in its checkpoints by ``fit``, checked by ``calibrate``.

A calibration (temperature, prediction sets, the "unknown" threshold) is only as honest as its
photos: fitted on photos the model trained on, it learns how the model behaves on what it memorised.
So the data module keeps, in every checkpoint, a :class:`PhotoRecord` of the training split, and
``calibrate`` refuses held-out photos that overlap it.

Folder photos are known by the digest of their bytes (``ImageRecord.digest``, the scan computes it
anyway), so a copy under another name or folder is still recognised. A stream's photos are known by
the stream and split they were read from: a stream keeps no digests, and reading them all back would
cost a pass over the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

DIGEST_HEX = 16
"""The first 64 bits of each photo's sha1 are kept: 8 bytes a photo, collisions negligible below billions."""


def digest_key(hex_digest: str) -> int:
    """The signed 64-bit integer a photo's hex digest is kept as (a tensor holds it)."""
    return int(hex_digest[:DIGEST_HEX], 16) - 2**63


def stream_split(root: str, split: str) -> str:
    """How a stream's split is named in a record: its absolute location (or URL) and the split."""
    location = root if "://" in root else str(Path(root).expanduser().resolve())
    return f"{location.rstrip('/')}#{split}"


@dataclass(frozen=True)
class PhotoRecord:
    """A set of photos: the digests of files, and the stream splits whose photos have no digest here.

    Args:
        digests: :func:`digest_key` of each file's bytes.
        streams: :func:`stream_split` of each stream split.
    """

    digests: frozenset[int] = frozenset()
    streams: frozenset[str] = frozenset()

    @classmethod
    def of_files(cls, hex_digests: Iterable[str]) -> PhotoRecord:
        return cls(digests=frozenset(digest_key(d) for d in hex_digests))

    @classmethod
    def of_stream(cls, root: str, split: str) -> PhotoRecord:
        return cls(streams=frozenset({stream_split(root, split)}))

    def __or__(self, other: PhotoRecord) -> PhotoRecord:
        return PhotoRecord(self.digests | other.digests, self.streams | other.streams)

    def state(self) -> dict:
        """Plain values and one int64 tensor: what a checkpoint keeps (loadable with ``weights_only``)."""
        return {"digests": torch.tensor(sorted(self.digests), dtype=torch.int64), "streams": sorted(self.streams)}

    @classmethod
    def from_state(cls, state: dict) -> PhotoRecord:
        return cls(frozenset(int(d) for d in state.get("digests", torch.empty(0)).tolist()), frozenset(state.get("streams", ())))

    def shared_with(self, held_out: PhotoRecord) -> int:
        """How many of ``held_out``'s photos this record holds, by digest (a stream split in both counts as one)."""
        return len(self.digests & held_out.digests) + len(self.streams & held_out.streams)

    def can_tell_apart(self, held_out: PhotoRecord) -> bool:
        """Whether :meth:`shared_with` is the whole truth: both sides are files known by digest, or
        ``held_out`` is other splits of the very streams this record trained on (``optimize`` split
        them apart). Otherwise a stream on one side may hold any of the other side's photos."""
        if not self.streams and not held_out.streams:
            return True
        if self.digests or held_out.digests:
            return False
        trained_roots = {name.rpartition("#")[0] for name in self.streams}
        held_out_roots = {name.rpartition("#")[0] for name in held_out.streams}
        return held_out_roots <= trained_roots and all(name.endswith("#train") for name in self.streams)
