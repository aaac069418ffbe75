"""The alternating schedule under DistributedDataParallel: two CPU processes (gloo).

DDP fixes its gradient buckets when it wraps the model and, with the default
``find_unused_parameters=False``, fails if a registered parameter stops receiving gradients. The run
crosses coefficient phases, location phases and the freeze at T_s; both ranks must end with the same
adapter, and that adapter must equal a single-process run on the concatenated batches.
"""

import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from peft import get_peft_model

from loca_diffusion import LoCAConfig, LoCASchedule

from _models import MLP

STEPS = 14


def build():
    torch.manual_seed(0)
    model = get_peft_model(
        MLP(hidden=16, d_out=4, activation=nn.Tanh()),
        LoCAConfig(target_modules=["lin0", "lin1"], n_frequency=12, init_weights=False),
    )
    schedule = LoCASchedule(model, coefficient_steps=2, location_steps=3, location_training_steps=9)
    optimizer = torch.optim.AdamW(schedule.parameter_groups(lr=0.05, weight_decay=0.01, location_lr=0.2))
    return model, schedule, optimizer


def batches(rank: int, world: int):
    g = torch.Generator().manual_seed(123)
    for _ in range(STEPS):
        x, y = torch.randn(8 * world, 10, generator=g), torch.randn(8 * world, 4, generator=g)
        yield x[rank * 8 : (rank + 1) * 8], y[rank * 8 : (rank + 1) * 8]


def adapter_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "loca_" in k}


def worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, schedule, optimizer = build()
    ddp = nn.parallel.DistributedDataParallel(model)
    for x, y in batches(rank, world):
        ((ddp(x) - y) ** 2).mean().backward()
        schedule.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    torch.save(adapter_state(model), os.path.join(out_dir, f"rank{rank}.pt"))
    # Teardown without the gloo exit deadlock seen once in CI: the DDP reducer's destructor (main thread,
    # GIL held) joined a gloo worker thread that was still dropping the last all-reduce's work object and
    # waited for the GIL. The barrier drains the queue, the sleep lets the workers finish with the GIL
    # free, and the wrapper goes before the process group.
    dist.barrier()
    time.sleep(0.2)
    del ddp
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_with_deadline(world: int, out_dir: str, seconds: float = 120.0) -> None:
    """``mp.spawn``, but a hung worker fails the test (the workers are killed) instead of hanging the suite."""
    context = mp.start_processes(worker, args=(world, free_port(), out_dir), nprocs=world, join=False)
    deadline = time.monotonic() + seconds
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {world} DDP worker processes did not finish within {seconds:.0f} s")


def test_two_ranks_train_identical_adapters(tmp_path):
    world = 2
    spawn_with_deadline(world, str(tmp_path))
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)

    # the same training in one process on the full batches (DDP averages the per-rank gradients)
    model, schedule, optimizer = build()
    for step_batches in zip(*(batches(r, world) for r in range(world))):
        x = torch.cat([b[0] for b in step_batches])
        y = torch.cat([b[1] for b in step_batches])
        ((model(x) - y) ** 2).mean().backward()
        schedule.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    single = adapter_state(model)
    # the run crossed T_s: the frozen-location buffers hold locations (-1 while learned)
    assert all((v >= 0).all() for k, v in single.items() if "loca_fixed_locations" in k)
    for key in single:
        torch.testing.assert_close(states[0][key].to(single[key].dtype), single[key], atol=1e-5, rtol=1e-5)
