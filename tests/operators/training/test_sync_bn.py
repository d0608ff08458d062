"""Two gloo workers with GlobalBatchNorm2d compute exactly what one BatchNorm computes over
their concatenated batch: output, input and parameter gradients, running statistics."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from operators.training.sync_bn import GlobalBatchNorm2d, synchronise_batch_norm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))


def _batch() -> torch.Tensor:
    return torch.randn(6, 3, 9, 9, generator=torch.Generator().manual_seed(1))


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = synchronise_batch_norm(_model().train(), torch.device("cpu"))
    x = _batch()[rank * 3:(rank + 1) * 3].requires_grad_(True)
    y = model(x)
    (y.square().mean() * 0.5).backward()  # each worker's half of the mean over 6 images
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    for g in grads.values():  # DDP averages gradients; summing halves gives the whole
        dist.all_reduce(g)
    out[rank] = {"y": y.detach(), "dx": x.grad, "grads": grads,
                 "state": {k: v.clone() for k, v in model.state_dict().items()}}
    dist.destroy_process_group()


def test_two_workers_equal_one_batchnorm_over_the_whole_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)

    model = _model().train()
    x = _batch().requires_grad_(True)
    y = model(x)
    y.square().mean().backward()
    both = torch.cat([out[0]["y"], out[1]["y"]])
    torch.testing.assert_close(both, y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([out[0]["dx"], out[1]["dx"]]), x.grad,
                               rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(out[0]["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
    for key, value in model.state_dict().items():  # running stats and counters too
        torch.testing.assert_close(out[0]["state"][key], value, rtol=1e-5, atol=1e-6)


def test_a_single_process_is_plain_batchnorm_and_keys_stay():
    model = _model()
    synced = synchronise_batch_norm(_model(), torch.device("cpu"))
    assert isinstance(synced[1], GlobalBatchNorm2d) and isinstance(synced[3][1],
                                                                   GlobalBatchNorm2d)
    assert list(synced.state_dict()) == list(model.state_dict())
    x = _batch()
    torch.testing.assert_close(synced.train()(x), model.train()(x))
