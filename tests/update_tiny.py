"""One network update (4 batches of 8) of a tiny Distiller, as a script for torchrun: ``update_tiny.py OUT MODEL
split|repeat`` saves the network's parameters before and after it (rank 0)."""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from tiny import tiny_data  # noqa: E402

from udd_fast import Distiller, RegionConfig, UDDConfig  # noqa: E402

torch.set_num_threads(1)
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    dist.init_process_group("gloo")
cfg = UDDConfig(ipc=1, model=sys.argv[2], width=8, net_batches=4, net_batch=8, net_update=sys.argv[3],
                regions=RegionConfig(policy=None), cfc=False)
d = Distiller(tiny_data(classes=4), cfg)
d.seed()
net, opt = d.fresh_network()
before = {k: v.clone() for k, v in net.state_dict().items()}
d.train_network(net, opt, d.init_synthetic())
if d.rank == 0:
    torch.save({"before": before, "after": net.state_dict()}, sys.argv[1])
if dist.is_initialized():
    dist.destroy_process_group()
