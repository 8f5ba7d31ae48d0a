"""Peak resident memory while ingesting 1k and 10k JPEGs through the pipelined ingest (each in a fresh
process, the demo model: what is measured is the pipeline's memory, not the model's), to show memory stays
flat however many images come.

    python benchmarks/bench_memory.py [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, table  # noqa: E402


def write_unique_jpegs(directory: Path, n: int, size=(320, 240)) -> None:
    """Distinct photos-like JPEGs (smooth noise + a per-image stamp), fast to make."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BICUBIC))
    for k in range(n):
        pixels = background.copy()
        y, x = divmod(k, size[0] - 40)  # a block at a place of its own: no two images alike
        pixels[(y * 7) % (size[1] - 20):(y * 7) % (size[1] - 20) + 20, x:x + 40] = (k * 37) % 256
        Image.fromarray(pixels).save(directory / f"m{k:06d}.jpg", quality=85)


def child(folder: str, n: int, data_dir: str) -> None:
    from crossmodal.service import ImageInput, IngestItem, Service
    from crossmodal.settings import Settings

    service = Service(Settings(data_dir=data_dir, model="demo-shapes"))
    service.encoder()
    baseline = _status("VmHWM")  # (ru_maxrss would carry the parent's peak across exec)
    paths = sorted(Path(folder).glob("*.jpg"))[:n]
    peaks = {"RssAnon": 0, "RssFile": 0}

    def sample(_done: int) -> None:
        for key in peaks:
            peaks[key] = max(peaks[key], _status(key))

    started = time.perf_counter()
    report = service.ingest((IngestItem(image=ImageInput.from_path(p)) for p in paths), "memory", progress=sample)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    print(json.dumps({"images": n, "added": report["added"], "rejected": len(report["rejected"]),
                      "rss_after_model_mb": round(baseline / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
                      # anonymous memory (heaps) vs file pages the store maps (reclaimable page cache)
                      "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1),
                      "peak_file_mb": round(peaks["RssFile"] / 1024, 1), "seconds": round(seconds, 1)}))


def _status(key: str) -> int:
    """A kB figure from /proc/self/status (VmHWM: peak resident set of this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "N", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return {}
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        write_unique_jpegs(folder, max(sizes))
        for n in sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(n), f"{tmp}/store-{n}"],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        row["vs_smallest"] = round(row["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)
    print(table(rows, ["images", "added", "rss_after_model_mb", "peak_rss_mb", "vs_smallest", "peak_anon_mb",
                       "peak_file_mb", "seconds"]))
    out = {"model": "demo-shapes", "image_size": "320x240 JPEG", "rows": rows}
    print(f"saved {save('memory', out)}")
    return out


if __name__ == "__main__":
    main()
