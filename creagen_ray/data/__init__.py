"""Data preparation with Ray Data: any source -> Parquet shards + manifest.json, read back streamed.

    from creagen_ray.data import prepare_data, load_prepared
    prepared = prepare_data(cfg.data, storage_path="./runs")
    print(prepared.summary())
"""

from creagen_ray.data.prepare import PreparedData, load_prepared, prepare_data
from creagen_ray.data.sources import DataError

__all__ = ["DataError", "PreparedData", "load_prepared", "prepare_data"]
