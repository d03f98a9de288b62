"""DataSource: accepted forms, sample counts, re-iteration, errors."""

from __future__ import annotations

import pytest
import torch

from landscape_fast.data import DataSource, default_batch_size, slice_batch, unsqueeze_batch


def test_pair_is_one_batch_or_split():
    X, y = torch.randn(10, 3), torch.arange(10)
    assert [n for _, n in DataSource((X, y))] == [10]
    ds = DataSource((X, y), batch_size=4)
    assert [n for _, n in ds] == [4, 4, 2]
    assert ds.num_samples == 10 and ds.num_batches == 3
    assert torch.equal(torch.cat([b[1] for b, _ in ds]), y)


def test_list_of_batches_dicts_and_tensors():
    batches = [
        {"x": torch.randn(3, 2), "y": torch.zeros(3)},
        {"x": torch.randn(5, 2), "y": torch.ones(5)},
    ]
    assert [n for _, n in DataSource(batches)] == [3, 5]
    assert [n for _, n in DataSource(torch.randn(7, 2))] == [7]
    assert DataSource(DataSource(batches)).num_samples == 8


def test_dataloader_with_short_last_batch():
    ds = torch.utils.data.TensorDataset(torch.randn(33, 2), torch.arange(33))
    loader = torch.utils.data.DataLoader(ds, batch_size=10)
    src = DataSource(loader)
    assert [n for _, n in src] == [10, 10, 10, 3]
    assert [n for _, n in src] == [10, 10, 10, 3]  # re-iterable


def test_batch_size_fn_overrides():
    src = DataSource([(torch.randn(4, 5), torch.randn(4))], batch_size_fn=lambda b: 20)
    assert src.num_samples == 20


def test_helpers():
    batch = (torch.arange(6).view(3, 2), torch.arange(3))
    assert default_batch_size(batch) == 3
    assert torch.equal(slice_batch(batch, 1, 3)[1], torch.tensor([1, 2]))
    assert unsqueeze_batch((torch.zeros(2), torch.tensor(1)))[0].shape == (1, 2)


@pytest.mark.parametrize(
    "data, err, match",
    [
        ((torch.randn(0, 2), torch.zeros(0)), ValueError, "empty"),
        ((torch.randn(3, 2), torch.zeros(4)), ValueError, "same leading"),
        ([], ValueError, "empty"),
        ((x for x in [1]), TypeError, "one-shot"),
        (42, TypeError, "pair or an iterable"),
        ([(torch.tensor(1.0), torch.tensor(2.0))], ValueError, "scalar"),
    ],
)
def test_bad_data(data, err, match):
    with pytest.raises(err, match=match):
        DataSource(data).num_samples


def test_batch_size_on_a_loader_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        DataSource([(torch.randn(2, 2), torch.zeros(2))], batch_size=1)


def test_data_that_changes_between_passes_is_detected():
    class Growing:
        n = 2

        def __iter__(self):
            self.n += 1
            yield torch.randn(self.n, 2), torch.zeros(self.n)

    src = DataSource(Growing())
    src.num_samples
    with pytest.raises(ValueError, match="changed between passes"):
        list(src)
