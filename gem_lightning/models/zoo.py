"""Pretrained weights from the model zoos, read by each library's own loading code through its own cache.

* timm: ``weights: pretrained`` (the tag in the name picks the set, e.g. ``convnext_tiny.fb_in22k``;
  timm's default tag otherwise) and ``weights: hf-hub:<org>/<repo>`` load with ``timm.create_model(...,
  pretrained=True)``: from the Hugging Face Hub's cache (``HF_HOME``, ``HF_HUB_OFFLINE=1`` to stay
  offline), or, for the few sets timm has only at a URL, from torch's (``$TORCH_HOME/hub/checkpoints``).
* torchvision: ``weights: ResNet50_Weights.IMAGENET1K_V2`` (the weights enum's name) load with the
  enum's own ``get_state_dict``, from torch's cache.

Each downloads what is missing where it can reach the internet; where it cannot, the fit stops in one
line naming the cache and how to fill it. The mean, std and input size come with the weights.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
import torchvision
from huggingface_hub import constants as hub_constants
from torchvision.models import WeightsEnum

from gem_lightning.errors import UserInputError
from gem_lightning.models.pretrained import StateDict

TIMM_PRETRAINED = "pretrained"
HUB_PREFIX = "hf-hub:"


def is_timm_zoo(weights: str | None) -> bool:
    """Whether ``weights`` names timm's own weights (``pretrained``, ``hf-hub:<org>/<repo>``), not a file."""
    return weights == TIMM_PRETRAINED or str(weights).startswith(HUB_PREFIX)


def check_timm_weights(name: str, weights: str | None) -> None:
    """Refuse, without reading any cache, a tag timm does not know, ``pretrained`` for a model timm has
    no weights for, or a malformed hub repo.

    Raises:
        UserInputError: naming the setting and what timm has.
    """
    arch, tag = timm.models.split_model_name_tag(name)
    if tag:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
            raise UserInputError(
                f"model.network.name: timm has no weights tagged {tag!r} for {arch!r}; its tagged weights: {tags}."
            ) from None
    if weights == TIMM_PRETRAINED and not _weights_source(timm.models.get_pretrained_cfg(name)):
        raise UserInputError(
            f"model.network.weights: timm has no pretrained weights for {name!r}; those that have some: timm.list_pretrained('{arch}*')."
        )
    if str(weights).startswith(HUB_PREFIX) and len(hub_repo(weights).split("/")) != 2:
        raise UserInputError(f"model.network.weights {weights!r}: give the Hugging Face Hub repo as hf-hub:<org>/<repo>.")


def hub_repo(weights: str) -> str:
    """``<org>/<repo>`` of ``hf-hub:<org>/<repo>``."""
    return weights.removeprefix(HUB_PREFIX)


def timm_pretrained_cfg(name: str, weights: str | None) -> dict[str, Any] | None:
    """The pretrained config of the weights (mean, std, input size, ...): the hub repo's ``config.json``
    for ``hf-hub:`` weights, else timm's registry entry for ``name`` (tag-aware); None if it has none."""
    if str(weights).startswith(HUB_PREFIX):
        repo = hub_repo(weights)
        try:
            config, arch, _ = timm.models.load_model_config_from_hf(repo)
        except OSError as error:
            raise UserInputError(_not_in_hub_cache(repo, error, "config.json")) from None
        if arch != timm.models.split_model_name_tag(name)[0]:
            raise UserInputError(f"model.network.weights {weights!r} are a timm {arch!r}, not model.network.name {name!r}.")
        return config
    cfg = timm.models.get_pretrained_cfg(name)
    return dataclasses.asdict(cfg) if cfg is not None else None


def timm_state_dict(name: str, weights: str, kwargs: dict[str, Any]) -> tuple[StateDict, str]:
    """The tensors of timm's pretrained ``name`` (with its own classifier), loaded by timm, and where from.

    ``kwargs`` go to ``timm.create_model`` as when the network was built, so that timm adapts the
    weights the same way (e.g. position embeddings resized for another ``img_size``).
    """
    if weights.startswith(HUB_PREFIX):
        timm_pretrained_cfg(name, weights)  # the repo's architecture is the spec's, else one line
        model_name, (kind, where) = f"{HUB_PREFIX}{hub_repo(weights)}", ("hub", hub_repo(weights))
    else:
        model_name, (kind, where) = name, _weights_source(timm.models.get_pretrained_cfg(name))  # check_timm_weights: there is one
    try:
        model = timm.create_model(model_name, pretrained=True, **kwargs)
    except OSError as error:  # the Hub's errors, a failed download and a missing file all are
        raise UserInputError(_not_in_hub_cache(where, error) if kind == "hub" else _not_in_torch_cache(where, error)) from None
    return model.state_dict(), f"timm {model_name} ({'Hugging Face Hub repo' if kind == 'hub' else 'URL'} {where})"


def _weights_source(cfg) -> tuple[str, str] | None:
    """``("hub", repo)`` or ``("url", url)``: where timm reads a registry entry's weights (the Hub first, as timm does)."""
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return "hub", cfg.hf_hub_id
    return ("url", cfg.url) if cfg.url else None


def torchvision_weights(name: str, weights: str | None) -> WeightsEnum | None:
    """The torchvision weights enum member ``weights`` names (``ResNet50_Weights.IMAGENET1K_V2``), or
    None when ``weights`` is not such a name (a file).

    Raises:
        UserInputError: an enum name torchvision does not know, or one for another model.
    """
    if weights is None or "_Weights." not in weights or Path(weights).suffix in (".pth", ".pt", ".bin", ".safetensors"):
        return None
    fitting = torchvision.models.get_model_weights(name)
    try:
        member = torchvision.models.get_weight(weights)
    except (KeyError, ValueError):
        member = None
    if member is None or not isinstance(member, fitting):
        raise UserInputError(
            f"model.network.weights {weights!r} are not torchvision weights for {name!r}; those are: "
            f"{', '.join(f'{fitting.__name__}.{m.name}' for m in fitting)} (or {fitting.__name__}.DEFAULT)."
        )
    return member


def torchvision_state_dict(weights: WeightsEnum) -> StateDict:
    """The tensors of torchvision's ``weights``, as torchvision loads them: from ``$TORCH_HOME/hub/checkpoints``,
    downloading them there first where it can."""
    try:
        return weights.get_state_dict(progress=False)
    except OSError as error:
        raise UserInputError(_not_in_torch_cache(weights.url, error)) from None


def _not_in_hub_cache(repo: str, error: OSError, what: str = "weights") -> str:
    fill = (
        f"fill the cache on a machine with internet (`hf download {repo}`; `huggingface-cli download` before huggingface_hub 1.0) "
        "and copy it here, or point HF_HOME at a copy"
    )
    if hub_constants.HF_HUB_OFFLINE:
        why, then = "HF_HUB_OFFLINE=1 keeps this run offline", f"run with HF_HUB_OFFLINE=0 where the Hub can be reached, or {fill}"
    else:
        why, then = "the Hub could not be reached", f"{fill}; HF_HUB_OFFLINE=1 spares the Hub's retries on machines without internet"
    return (
        f"model.network.weights: the Hugging Face Hub repo {repo!r} ({what}) is not in the Hub cache {hub_constants.HF_HUB_CACHE} "
        f"(HF_HOME) and {why} ({type(error).__name__}): {then}."
    )


def _not_in_torch_cache(url: str, error: OSError) -> str:
    expected = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return (
        f"model.network.weights: {str(expected)!r} (torch's cache, TORCH_HOME) is missing and could not be downloaded "
        f"({type(error).__name__}): on a machine with internet download {url} to that path (TORCH_HOME/hub/checkpoints/), "
        "or run this fit there once and copy the file."
    )
