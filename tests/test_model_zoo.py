"""Pretrained backbones by name from the model zoos, offline: timm's through the Hugging Face Hub's cache,
torchvision's through torch's. Each test writes the cache itself (a small model's weights in the layout
the library's own client reads) and the real loading code reads it, with no network: sockets are
closed to every test here, and the Hub's client runs with ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from helpers import run_cli
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from test_cli import common

from gem_lightning.errors import UserInputError
from gem_lightning.models import TimmSpec, TorchvisionSpec
from gem_lightning.models.spec import IMAGENET_MEAN, IMAGENET_STD

TIMM_TAGGED = "test_efficientnet.r160_in1k"
"""A 0.1 M-parameter timm model whose weights timm reads from the Hub repo ``timm/test_efficientnet.r160_in1k``."""
HUB_REPO = "gem-tests/tiny-efficientnet"
HUB_STATS = {"mean": (0.3, 0.4, 0.5), "std": (0.2, 0.25, 0.3), "input_size": (3, 96, 96)}
"""What the test's own Hub repo says its weights expect (not timm's defaults, so they show where they came from)."""
TORCHVISION = ("shufflenet_v2_x0_5", "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every connection attempt fails as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable (closed by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty ``HF_HOME`` with ``HF_HUB_OFFLINE=1``, as set in the environment before the run (the
    Hub's client reads both when imported, so its constants follow too)."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty ``TORCH_HOME`` (torch reads it at each use)."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def seeded(build, seed: int = 0) -> torch.nn.Module:
    """A network with weights no library would have: random, drawn with ``seed``."""
    torch.manual_seed(seed)
    network = build()
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return network


def write_hub_repo(hf_home: Path, repo: str, network: torch.nn.Module, data_config: dict | None = None) -> None:
    """``network`` as the Hub repo ``repo`` in the Hub cache of ``hf_home``: timm's own export
    (``save_for_hf``: ``model.safetensors`` and ``config.json``) at one revision, in the cache's layout
    (``models--<org>--<name>/refs/main`` naming the snapshot folder that holds the files)."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    timm.models.save_for_hf(network, str(folder / "snapshots" / commit), safe_serialization=True, data_config=data_config)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for filename in ("model.safetensors", "config.json"):  # the Hub's own client finds them: the layout is right
        assert try_to_load_from_cache(repo, filename, cache_dir=hf_home / "hub") == str(folder / "snapshots" / commit / filename)


def write_torchvision_weights(torch_home: Path, weights: str, state: dict) -> Path:
    """``state`` where torchvision looks for the enum's weights: ``$TORCH_HOME/hub/checkpoints/<file of its URL>``."""
    url = torchvision.models.get_weight(weights).url
    path = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def assert_holds(network: torch.nn.Module, written: dict, *, except_prefix: str | None = None) -> None:
    """Every tensor of ``network`` equals the written one, but those under ``except_prefix`` (a new
    classifier, sized for other classes), which keep their own shape."""
    own = network.state_dict()
    compared = [key for key in own if not (except_prefix and key.startswith(except_prefix))]
    assert len(compared) > 10
    for key in compared:
        torch.testing.assert_close(own[key], written[key], rtol=0, atol=0, msg=key)
    if except_prefix:
        assert all(own[key].shape != written[key].shape for key in own if key.startswith(except_prefix))


def one_line_error(build) -> str:
    with pytest.raises(UserInputError) as error:
        build()
    message = str(error.value)
    assert "\n" not in message
    return message


# timm ----------------------------------------------------------------------------------------------


def test_a_timm_tag_with_pretrained_weights_loads_them_from_the_hub_cache_offline(hf_home):
    written = seeded(lambda: timm.create_model(TIMM_TAGGED))
    write_hub_repo(hf_home, f"timm/{TIMM_TAGGED}", written)
    spec = TimmSpec(TIMM_TAGGED, weights="pretrained")
    network = spec.build(3, 64)
    spec.load_pretrained(network)
    assert_holds(network, written.state_dict(), except_prefix="classifier.")
    registry = timm.models.get_pretrained_cfg(TIMM_TAGGED)
    assert spec.normalization() == (registry.mean, registry.std, registry.input_size[-1])


def test_a_hub_repo_loads_with_the_mean_std_and_input_size_of_its_own_config(hf_home):
    written = seeded(lambda: timm.create_model("test_efficientnet"), seed=1)
    write_hub_repo(hf_home, HUB_REPO, written, data_config=HUB_STATS)
    spec = TimmSpec("test_efficientnet", weights=f"hf-hub:{HUB_REPO}", frozen_stages=1)
    assert spec.normalization() == (HUB_STATS["mean"], HUB_STATS["std"], 96)
    network = spec.build(1000, 96)  # as many classes as the repo's: its classifier loads too
    spec.load_pretrained(network)
    assert_holds(network, written.state_dict())
    with pytest.raises(UserInputError, match="are a timm 'test_efficientnet', not model.network.name 'test_vit'"):
        TimmSpec("test_vit", weights=f"hf-hub:{HUB_REPO}").load_pretrained(TimmSpec("test_vit").build(3, 64))


def test_timm_names_and_weights_that_cannot_be_are_refused_in_one_line_before_any_cache_is_read():
    assert "its tagged weights: test_efficientnet.r160_in1k" in one_line_error(lambda: TimmSpec("test_efficientnet.nope"))
    assert "hf-hub:<org>/<repo>" in one_line_error(lambda: TimmSpec("test_efficientnet", weights="hf-hub:no-org"))
    without = next(n for n in timm.list_models() if not (c := timm.models.get_pretrained_cfg(n)).hf_hub_id and not c.url)
    assert "timm has no pretrained weights for" in one_line_error(lambda: TimmSpec(without, weights="pretrained"))


# torchvision ---------------------------------------------------------------------------------------


def test_torchvision_weights_by_enum_name_load_from_torchs_cache_offline(torch_home):
    name, weights = TORCHVISION
    written = seeded(lambda: torchvision.models.get_model(name)).state_dict()
    write_torchvision_weights(torch_home, weights, written)
    spec = TorchvisionSpec(name, weights=weights)
    network = spec.build(5, 64)
    spec.load_pretrained(network)
    assert_holds(network, written, except_prefix="fc.")
    assert spec.normalization() == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), 224)  # the enum's preset: ImageNet's, 224 px crops


def test_torchvision_weights_of_another_model_are_refused_in_one_line():
    message = one_line_error(lambda: TorchvisionSpec("resnet18", weights="ResNet50_Weights.IMAGENET1K_V2"))
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert "ResNet18_Weights.IMAGENET1K_V1" in one_line_error(lambda: TorchvisionSpec("resnet18", weights="ResNet18_Weights.NOPE"))


# Not cached, offline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cache", "how"),
    [
        (TimmSpec(TIMM_TAGGED, weights="pretrained"), "hf/hub", f"hf download timm/{TIMM_TAGGED}"),
        (TimmSpec("test_efficientnet", weights=f"hf-hub:{HUB_REPO}"), "hf/hub", f"hf download {HUB_REPO}"),
        (TorchvisionSpec(*TORCHVISION), "torch/hub/checkpoints/shufflenetv2_x0.5-f707e7126e.pth", "https://download.pytorch.org/"),
    ],
    ids=["timm-tag", "hub-repo", "torchvision"],
)
def test_weights_neither_cached_nor_reachable_fail_in_one_line_naming_the_cache_and_how_to_fill_it(spec, cache, how, hf_home, torch_home):
    network = spec.build(3, 64)
    message = one_line_error(lambda: spec.load_pretrained(network))
    assert str(hf_home.parent / cache) in message and how in message


def test_timm_weights_only_at_a_url_fail_naming_the_file_torch_expects(torch_home, hf_home):
    name = "legacy_seresnet18.in1k"  # one of the few sets timm has at a URL only
    url = timm.models.get_pretrained_cfg(name).url
    assert url and not timm.models.get_pretrained_cfg(name).hf_hub_id
    spec = TimmSpec(name, weights="pretrained")
    message = one_line_error(lambda: spec.load_pretrained(spec.build(3, 64)))
    assert str(torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]) in message and url in message


# Through the command line ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_fit_reads_hub_weights_offline_and_its_checkpoint_needs_them_no_more(tiny_dataset, tmp_path, cpu_env):
    home = tmp_path / "hf"
    hub_network = seeded(lambda: timm.create_model(TIMM_TAGGED), seed=2)
    write_hub_repo(home, f"timm/{TIMM_TAGGED}", hub_network)
    written = hub_network.state_dict()
    env = dict(cpu_env, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    network = ["--model.network", "TimmSpec", "--model.network.name", TIMM_TAGGED, "--model.network.weights", "pretrained"]
    frozen = ["--model.network.frozen_stages", "2"]  # the stem and 2 stages keep the Hub's tensors through training
    run_cli(
        "fit",
        *common(tmp_path, "hub"),
        "--data.data_dir",
        tiny_dataset,
        *network,
        *frozen,
        "--trainer.max_epochs",
        "1",
        env=env,
        cwd=tmp_path,
        fresh=True,  # the Hub client reads HF_HOME and HF_HUB_OFFLINE when imported
    )
    run = tmp_path / "runs" / "hub" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trained = checkpoint["state_dict"]
    stem = [key for key in written if key.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")) and "num_batches" not in key]
    assert len(stem) > 10
    for key in stem:
        torch.testing.assert_close(trained[f"model.network.{key}"], written[key], rtol=0, atol=0, msg=key)
    assert tuple(checkpoint["hyper_parameters"]["mean"]) == timm.models.get_pretrained_cfg(TIMM_TAGGED).mean  # the weights' statistics
    empty = dict(cpu_env, HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    run_cli("test", *common(tmp_path, "hub-test"), "--data.data_dir", tiny_dataset, "--ckpt_path", run / "checkpoints" / "last.ckpt",
            env=empty, cwd=tmp_path, fresh=True)  # fmt: skip


@pytest.mark.slow
def test_a_fit_whose_hub_weights_are_not_cached_stops_in_one_line_before_training(tiny_dataset, tmp_path, cpu_env):
    env = dict(cpu_env, HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    network = ["--model.network", "TimmSpec", "--model.network.name", TIMM_TAGGED, "--model.network.weights", "pretrained"]
    fit = ["fit", *common(tmp_path, "hub"), "--data.data_dir", tiny_dataset, *network]
    result = run_cli(*fit, env=env, cwd=tmp_path, check=False, fresh=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "empty" / "hub") in errors[0] and f"hf download timm/{TIMM_TAGGED}" in errors[0]
