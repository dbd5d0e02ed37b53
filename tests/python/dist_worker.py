"""One rank of test_distributed.py: a batch-normalized rbn.torch stack under DistributedDataParallel
(gloo, CPU) with synchronized batch statistics, on rows [rank*N/W, (rank+1)*N/W) of a fixed
batch; W = 1 runs the same steps on all N rows without torch.distributed (the reference).

    python3 dist_worker.py RANK WORLD PORT OUT_DIR

Writes OUT_DIR/{cell}.rank{RANK}.npz with the outputs, input and parameter gradients, running
statistics after a training step, the outputs after an SGD step, and a statistics pass."""
import os
import sys

import numpy as np
import torch

import rbn.torch as rt

T, N, C, H, L = 6, 8, 3, 4, 2
CELLS = {"bnlstm": (rt.BNLSTM, {}), "bnx": (rt.BNxLSTM, {}),
         "bnx-seq": (rt.BNxLSTM, {"sequence_wise": True})}


def data():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 6, 2, 5, 6, 1, 4])
    dy = torch.randn(T, N, H, generator=g, dtype=torch.float64)
    dh = torch.randn(L, N, H, generator=g, dtype=torch.float64)
    return x, lengths, dy, dh


def run(cell, rank, world, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    if world > 1 and cell == "bnlstm":  # the keyword path; the others through convert
        model = cls(C, H, L, t_max=T, dtype=torch.float64, sync_stats=True, **kw)
    else:
        model = cls(C, H, L, t_max=T, dtype=torch.float64, **kw)
        if world > 1:
            rt.convert_sync_batchnorm(model)
    net = DDP(model) if world > 1 else model
    x, lengths, dy, dh = data()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    xr = x[:, rows].clone().requires_grad_()
    y, (hT, _) = net(xr, lengths=lengths[rows])
    # DDP averages the ranks' gradients: world * (this rank's part of the sum) averages to the sum
    loss = world * ((y * dy[:, rows]).sum() + (hT * dh[:, rows]).sum())
    loss.backward()
    res = {"y": y.detach(), "dx": xr.grad / world}  # the input gradient is not averaged
    res.update({"grad." + n: p.grad for n, p in model.named_parameters()})
    res.update({"running." + n: b.clone() for n, b in model.named_buffers()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    with torch.no_grad():
        y2, _ = net(x[:, rows], lengths=lengths[rows])
        res["y_step2"] = y2
        with model.population_statistics():
            for b in range(2):  # two batches of different lengths
                model(x[b * 2:, rows], lengths=(lengths[rows] - 2 * b).clamp(min=0))
        res.update({"pass." + n: b.clone() for n, b in model.named_buffers()})
        model.eval()
        res["y_eval"] = model(x[:, rows], lengths=lengths[rows])[0]
    if world > 1:
        dist.barrier()
    np.savez(os.path.join(out_dir, f"{cell}.rank{rank}.npz"),
             **{k: v.numpy() for k, v in res.items()})


def main():
    rank, world, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    for cell in CELLS:
        run(cell, rank, world, out_dir)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
