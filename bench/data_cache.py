"""Data-loading time of a cold vs a warm preprocessed-array cache, on BUSI.

Prepares ../shared/data/busi (hard links into a temporary folder), then times
two epochs of decode + preprocess over all 780 images at 256 px through a fresh
cache: the first fills it (cold), the second reads it (warm). The in-process
content-hash memo is cleared before the warm epoch, so the warm time includes
hashing every file as a new process would. Prints and writes
bench/results/data_cache.json; asserts nothing.

    .venv/bin/python bench/data_cache.py [--size 256] [--data ../shared/data/busi]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from breastfusion.data import cache as cache_module
from breastfusion.data.adapters import get_adapter, write_prepared
from breastfusion.data.cache import ArrayCache, preprocess_cohort
from breastfusion.data.manifest import load_cohort
from breastfusion.data.preprocess import params_for

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "busi")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "data_cache.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_prepared(get_adapter("busi")(args.data, normal="benign"), tmp / "busi")
        cohort = load_cohort(tmp / "busi")
        params = {"ultrasound": params_for("ultrasound", size=args.size)}
        cache = ArrayCache(tmp / "cache")
        cache_module._digests.clear()
        start = time.perf_counter()
        cold = preprocess_cohort(cohort, params, cache=cache)
        cold_s = time.perf_counter() - start
        cache_module._digests.clear()
        start = time.perf_counter()
        warm = preprocess_cohort(cohort, params, cache=cache)
        warm_s = time.perf_counter() - start
        assert all((warm.arrays[k] == v).all() for k, v in cold.arrays.items())
        info = cache.info()
    result = {
        "dataset": "busi", "n_images": len(cold.arrays), "size": args.size,
        "cold_epoch_s": round(cold_s, 3), "warm_epoch_s": round(warm_s, 3), "warm_over_cold": round(warm_s / cold_s, 4),
        "cache_hits": cache.hits, "cache_misses": cache.misses, "cache_mib": round(info.bytes / 2**20, 2),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
