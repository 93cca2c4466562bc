"""A tiny distillation run as a script, for torchrun: ``distill_tiny.py OUT_DIR loop|batched``."""
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
cfg = fixed_net_config(outer=2, inner=3, net_batches=1, net_batch=8, cfc=True, lr_img=1.0, checkpoint_every=1,
                       dsa="color_crop_cutout", step=sys.argv[2], regions=RegionConfig(policy="activation", p=3))
Distiller(tiny_data(classes=4), cfg, out_dir=sys.argv[1]).run(progress=False)
if dist.is_initialized():
    dist.destroy_process_group()
