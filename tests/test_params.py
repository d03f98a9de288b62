"""ParamSpace: selection, flatten/unflatten round trips, zero-copy views, layers, grads."""

import pytest
import torch
from torch import nn

from landscape_fast import ParamSpace


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"attn": nn.Linear(3, 3), "mlp": nn.Linear(3, 3, bias=False)})
            for _ in range(2)
        )
        self.scale = nn.Parameter(torch.tensor(2.0))  # 0-dim parameter on the root
        self.head = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 3)  # never used in forward: gets no gradient

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)
        for blk in self.blocks:
            h = torch.tanh(blk["attn"](h)) + blk["mlp"](h)
        return self.head(h * self.scale)


def test_all_trainable_parameters_in_model_order() -> None:
    net = Net()
    net.head.bias.requires_grad_(False)
    space = ParamSpace(net)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert space.names == tuple(names)
    assert space.numel == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert space.offsets[-1] == space.numel and len(space) == len(names)


def test_glob_and_name_selection() -> None:
    net = Net()
    space = ParamSpace(net, "blocks.*.attn.*")
    assert space.names == (
        "blocks.0.attn.weight",
        "blocks.0.attn.bias",
        "blocks.1.attn.weight",
        "blocks.1.attn.bias",
    )
    both = ParamSpace(net, ["head.bias", "embed.weight"])
    assert both.names == ("embed.weight", "head.bias")  # model order, not request order
    by_tensor = ParamSpace(net, [net.head.weight])
    assert by_tensor.names == ("head.weight",)


@pytest.mark.parametrize(
    "params, error, match",
    [
        ("nothing.*", ValueError, "matches no parameter"),
        ([3], TypeError, "names, glob patterns or parameters"),
        ([torch.zeros(2)], ValueError, "not a parameter of this model"),
    ],
)
def test_bad_selection_errors(params, error, match) -> None:
    with pytest.raises(error, match=match):
        ParamSpace(Net(), params)


def test_frozen_selection_and_empty_model_errors() -> None:
    net = Net()
    net.head.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        ParamSpace(net, "head.weight")
    with pytest.raises(ValueError, match="no trainable parameters"):
        ParamSpace(nn.ReLU())
    with pytest.raises(TypeError, match="nn.Module"):
        ParamSpace(torch.zeros(3))


def test_tied_parameters_count_once() -> None:
    a = nn.Linear(4, 4)
    model = nn.Sequential(a, nn.Tanh(), a)
    assert ParamSpace(model).numel == 20


def test_flatten_unflatten_roundtrip_and_zero_copy() -> None:
    net = Net()
    space = ParamSpace(net)
    flat = space.flatten()
    parts = space.unflatten(flat)
    for (name, p), v in zip(net.named_parameters(), parts.values()):
        assert torch.equal(v, p.detach()), name
        assert v.data_ptr() >= flat.data_ptr()  # views into flat
    parts["head.weight"].fill_(5.0)
    assert (flat[space.slices["head.weight"]] == 5.0).all()
    assert parts["scale"].shape == torch.Size([])


def test_block_views_are_zero_copy() -> None:
    space = ParamSpace(Net())
    V = torch.randn(4, space.numel)
    views = space.views(V)
    for v, shape, s in zip(views, space.shapes, space.slices.values()):
        assert v.shape == (4, *shape)
        assert v.untyped_storage().data_ptr() == V.untyped_storage().data_ptr()
        assert torch.equal(v.reshape(4, -1), V[:, s])
    assert torch.equal(space.flatten(views), V)


def test_views_reject_wrong_shapes_and_write_through_strided_blocks() -> None:
    space = ParamSpace(Net())
    with pytest.raises(ValueError, match=f"expected shape \\({space.numel},\\)"):
        space.views(torch.zeros(space.numel + 1))
    with pytest.raises(ValueError, match="expected shape"):
        space.views(torch.zeros(2, 2, space.numel))
    base = torch.zeros(space.numel, 3)
    views = space.unflatten(base.T)  # strided block: still views, no copy
    views["embed.weight"][0].fill_(1.0)
    assert base[space.slices["embed.weight"], 0].eq(1.0).all()


def test_gradients_missing_count_as_zero() -> None:
    net = Net()
    space = ParamSpace(net)
    net(torch.tensor([1, 2, 3])).sum().backward()
    g = space.flatten_grad()
    assert net.unused.weight.grad is None
    assert (g[space.slices["unused.weight"]] == 0).all()
    assert torch.equal(g[space.slices["head.weight"]], net.head.weight.grad.flatten())
    assert torch.isfinite(g).all()


def test_flatten_validates_inputs() -> None:
    space = ParamSpace(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="expected 2 tensors"):
        space.flatten([torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="has shape"):
        space.flatten([torch.zeros(3), torch.zeros(2)])
    with pytest.raises(ValueError, match="unknown parameter names"):
        space.flatten({"nope": torch.zeros(2)})


def test_dtype_and_device_handling() -> None:
    model = nn.Linear(3, 2).double()
    space = ParamSpace(model)
    assert space.dtype == torch.float64 and space.device.type == "cpu"
    assert space.flatten(dtype=torch.float32).dtype == torch.float32
    mixed = nn.Sequential(nn.Linear(2, 2).half(), nn.Linear(2, 2))
    assert ParamSpace(mixed).dtype == torch.float32  # promoted
    with pytest.raises(TypeError, match="floating point"):
        ParamSpace(_complex_param_model())


def _complex_param_model() -> nn.Module:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2, dtype=torch.complex64))

    return M()


def test_layers_are_contiguous_slices() -> None:
    space = ParamSpace(Net())
    layers = space.layers()
    assert list(layers) == [
        "",
        "embed",
        "blocks.0.attn",
        "blocks.0.mlp",
        "blocks.1.attn",
        "blocks.1.mlp",
        "head",
        "unused",
    ]
    total = sum(s.stop - s.start for s in layers.values())
    assert total == space.numel
    assert "total" in space.summary() and "<root>" in space.summary()


def test_assign_and_add_write_parameters() -> None:
    model = nn.Linear(3, 2)
    space = ParamSpace(model)
    theta = space.flatten()
    space.add_(torch.ones(space.numel), alpha=0.5)
    assert torch.allclose(space.flatten(), theta + 0.5)
    space.assign_(theta)
    assert torch.equal(space.flatten(), theta)
    assert space.zeros(3).shape == (3, space.numel)
