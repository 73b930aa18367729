"""CM-CGNS's k-means and global InfoNCE across two real gloo processes: the centroids agree on both
ranks and the loss is the one-process loss of the whole batch. Apart from the unit tests of
test_cmcgns_losses.py because it takes 20 s, too slow to run against each of mutation testing's mutants."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from launch import ENV
from support.cmcgns.losses import SentenceClusters, global_infonce
from support.core.trainer import free_port

DISTRIBUTED = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    import torch.nn.functional as F
    from support.cmcgns.losses import SentenceClusters, gather_rows, global_infonce

    def run(rank, port, out):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        torch.manual_seed(0)
        data = torch.randn(11, 6)                     # the same draw on both ranks; each takes its rows
        mine = data[:5] if rank == 0 else data[5:]    # unequal row counts
        clusters = SentenceClusters(4, 6, momentum=0.0)
        index = clusters.update(mine)                 # start (on gathered rows) + one step; the assignments
        rows, start = gather_rows(mine.clone().requires_grad_())
        image, report = torch.randn(2, 11, 6)         # the same on both ranks
        part = slice(0, 5) if rank == 0 else slice(5, 11)
        loss = global_infonce(image[part], report[part], torch.tensor(5.0))
        # each rank's loss averages its rows: weighting by rows gives the global mean
        total = loss.detach() * (5 if rank == 0 else 6)
        dist.all_reduce(total)
        json.dump({"centroids": clusters.centroids.tolist(), "active": int(clusters.active),
                   "rows": rows.tolist(), "start": start, "assigned": index.tolist(), "loss": float(total) / 11},
                  open(f"{out}/rank{rank}.json", "w"))
        # drop the autograd graph that holds the group, and leave together: a gloo group torn down
        # while its peer still talks (or later, at interpreter exit) can abort the process
        del rows, loss, total, index
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.multiprocessing.spawn(run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
''')


def test_kmeans_and_infonce_agree_across_two_gloo_processes(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED)
    for attempt in range(2):
        proc = subprocess.run([sys.executable, str(script), str(free_port()), str(tmp_path)], env=ENV,
                              capture_output=True, text=True, timeout=180)
        # gloo (torch 2.x) can abort a process at teardown on a loaded machine, after its work is
        # done; that one library crash earns a single rerun, anything else fails at once
        if "terminate called without an active exception" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["centroids"] == ranks[1]["centroids"] and ranks[0]["active"] == 4
    torch.manual_seed(0)
    data = torch.randn(11, 6)
    assert torch.allclose(torch.tensor(ranks[0]["rows"]), data) and torch.allclose(torch.tensor(ranks[1]["rows"]), data)
    assert (ranks[0]["start"], ranks[1]["start"]) == (0, 5)
    # with momentum 0 each started centroid is the mean of the unit features assigned to it, over both ranks
    unit = F.normalize(data, dim=-1)
    single = SentenceClusters(4, 6, momentum=0.0)
    single.update(data)
    assert torch.allclose(torch.tensor(ranks[0]["centroids"]), single.centroids, atol=1e-6)
    assigned = torch.tensor(ranks[0]["assigned"] + ranks[1]["assigned"])
    for k in assigned.unique():
        assert torch.allclose(single.centroids[k], unit[assigned == k].mean(0), atol=1e-5)
    # the global InfoNCE over two processes is the one-process loss of the whole batch
    torch.manual_seed(0)
    torch.randn(11, 6)
    image, report = torch.randn(2, 11, 6)
    assert ranks[0]["loss"] == pytest.approx(float(global_infonce(image, report, torch.tensor(5.0))), abs=1e-5)
