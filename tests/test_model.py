"""The VGG-style network and the network specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gem_lightning.models import NetworkSpec, TorchvisionSpec, spec_from_config
from gem_lightning.models.vgg import VGG, VGGSpec


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_seed_architecture_has_the_seed_parameter_count():
    assert count(VGG(num_classes=88, image_size=220)) == 1_590_936


@pytest.mark.parametrize("image_size", [32, 33, 64, 100, 220])
def test_any_image_size_from_32_gives_logits(image_size):
    model = VGG(num_classes=7, image_size=image_size)
    assert model(torch.randn(2, 3, image_size, image_size)).shape == (2, 7)


def test_seed_feature_map_shapes():
    model = VGG(num_classes=88, image_size=220)
    assert model.forward_features(torch.zeros(1, 3, 220, 220)).shape == (1, 128, 6, 6)
    pools = [type(m).__name__ for m in model.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert pools == ["MaxPool2d", "MaxPool2d", "MaxPool2d", "AvgPool2d", "MaxPool2d"]


def test_too_small_image_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match="image_size >= 32"):
        VGG(num_classes=3, image_size=16)


def test_mismatched_table_is_refused():
    with pytest.raises(ValueError, match="one pool kind per block"):
        VGGSpec(channels=(8, 16), pools=("max",))
    with pytest.raises(ValueError, match="one number, or one per block"):
        VGGSpec(channels=(8, 16), pools=("max", "max"), convs_per_block=(1, 2, 2))
    with pytest.raises(ValueError, match=">= 1 in every block"):
        VGGSpec(channels=(8, 16), pools=("max", "max"), convs_per_block=(1, 0))


def test_convs_per_block_sets_each_block_depth():
    def conv_widths(config: VGGSpec) -> list[int]:
        network = VGG(num_classes=3, image_size=32, config=config)
        return [m.out_channels for m in network.features if isinstance(m, nn.Conv2d)]

    vgg11_layout = VGGSpec(channels=(8, 16, 32), pools=("max",) * 3, convs_per_block=(1, 1, 2))
    assert conv_widths(vgg11_layout) == [8, 16, 32, 32]
    assert conv_widths(VGGSpec(channels=(8, 16), pools=("max",) * 2, convs_per_block=2)) == [8, 8, 16, 16]


@pytest.mark.parametrize(
    "config",
    [
        VGGSpec(),
        VGGSpec(batch_norm=True, head="gap", convs_per_block=(1, 1, 2, 2, 1)),
        VGGSpec(hidden_units=0, channels=(8, 8), pools=("max", "none")),
    ],
)
def test_gradients_reach_every_parameter(config):
    model = VGG(num_classes=5, image_size=48, config=config)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 48, 48)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name


def test_gap_head_is_independent_of_input_size():
    config = VGGSpec(head="gap", batch_norm=True)
    assert count(VGG(num_classes=10, image_size=64, config=config)) == count(VGG(num_classes=10, image_size=220, config=config))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in VGG(num_classes=10, image_size=64, config=config).modules()) == 5


def test_torchvision_architecture_from_scratch():
    network = TorchvisionSpec("resnet18").build(num_classes=6, image_size=64)
    assert network(torch.randn(1, 3, 64, 64)).shape == (1, 6)


def test_unknown_architecture_lists_choices():
    with pytest.raises(ValueError, match="resnet18"):
        TorchvisionSpec("not-a-net")


def test_local_weights_file_loads_features_and_replaces_classifier(tmp_path):
    source = TorchvisionSpec("resnet18").build(num_classes=1000, image_size=64)
    weights = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), weights)
    spec = TorchvisionSpec("resnet18", weights=str(weights))
    network = spec.build(num_classes=4, image_size=64)
    assert not torch.equal(network.conv1.weight, source.conv1.weight)  # built fresh; fit loads the weights
    spec.load_pretrained(network)
    assert torch.equal(network.conv1.weight, source.conv1.weight)
    assert network.fc.out_features == 4


def test_weights_of_another_architecture_are_refused(tmp_path):
    weights = tmp_path / "vgg.pt"
    torch.save(VGG(num_classes=3, image_size=32).state_dict(), weights)
    spec = TorchvisionSpec("resnet18", weights=str(weights))
    with pytest.raises(ValueError, match="does not fit"):
        spec.load_pretrained(spec.build(num_classes=3, image_size=32))


@pytest.mark.parametrize(
    "spec", [VGGSpec(channels=(8, 16), pools=("max", "avg"), convs_per_block=(1, 2)), TorchvisionSpec("resnet18", weights="w.pt")]
)
def test_a_spec_round_trips_through_its_plain_config(spec):
    config = spec.to_config()
    assert spec_from_config(config) == spec
    assert all(isinstance(v, (str, int, float, bool, list, dict, type(None))) for v in config["init_args"].values())


def test_only_loaded_network_spec_classes_are_resolved():
    with pytest.raises(ValueError, match="is not a network spec that is loaded here"):
        spec_from_config({"class_path": "os.system", "init_args": {}})
    with pytest.raises(ValueError, match="is not a network spec that is loaded here"):
        spec_from_config({"class_path": "some_module_never_imported.Spec", "init_args": {}})
    with pytest.raises(ValueError, match="do not fit"):
        spec_from_config({"class_path": "gem_lightning.models.vgg.VGGSpec", "init_args": {"depth": 3}})
    assert issubclass(VGGSpec, NetworkSpec)
