"""udd_fast: dataset distillation by mining underutilized regions (UDD), with fused kernels.

    from udd_fast import Distiller, SyntheticSet, load_dataset, preset
    data = load_dataset("fashion-mnist")
    syn = Distiller(data, preset("cpu-quick", "fashion-mnist", ipc=1)).run()
    syn.save("synset.safetensors")
"""
from udd_fast.cache import CachedData
from udd_fast.config import PRESETS, UDDConfig, preset
from udd_fast.data import FolderData, RealData, load_dataset
from udd_fast.distiller import Distiller
from udd_fast.errors import UDDError
from udd_fast.coreset import herding_coreset, random_coreset
from udd_fast.evaluate import EvalProtocol, evaluate, evaluate_against_init, evaluate_images, protocol
from udd_fast.regions import RegionConfig, candidate_windows
from udd_fast.synset import SyntheticSet

__all__ = ["Distiller", "SyntheticSet", "UDDConfig", "RegionConfig", "RealData", "FolderData", "CachedData",
           "EvalProtocol",
           "UDDError", "PRESETS", "preset", "load_dataset", "evaluate", "evaluate_against_init", "evaluate_images",
           "protocol", "random_coreset",
           "herding_coreset", "candidate_windows"]
