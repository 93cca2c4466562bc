"""A tiny distillation run as a script, for torchrun: ``distill_tiny.py OUT_DIR loop|batched [POLICY
[NET_UPDATE]]`` (POLICY: a region policy, activation by default; NET_UPDATE: split or repeat, repeat by default)."""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from tiny import fixed_net_config, tiny_data  # noqa: E402

from udd_fast import Distiller, RegionConfig  # noqa: E402

torch.set_num_threads(1)
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    dist.init_process_group("gloo")
policy = sys.argv[3] if len(sys.argv) > 3 else "activation"
net_update = sys.argv[4] if len(sys.argv) > 4 else "repeat"
# layer 0: a 6x6 map at 12 px, where windows differ (the last block's map is 1x1: every window ties)
cfg = fixed_net_config(outer=2, inner=3, net_batches=1, net_batch=8, cfc=True, lr_img=1.0, checkpoint_every=1,
                       dsa="color_crop_cutout", step=sys.argv[2], net_update=net_update,
                       regions=RegionConfig(policy=policy, p=3, layer=0))
Distiller(tiny_data(classes=4), cfg, out_dir=sys.argv[1]).run(progress=False)
if dist.is_initialized():
    dist.destroy_process_group()
