"""Where the decoder's CPU time goes, step by step, on one thread: the profile behind BENCHMARKS §17's
"decode CPU-ms" column (issue 15 asks where the time goes; the network's share is the engine column there).

    python benchmarks/profile_decode.py --data ../shared/datasets/brain_mri --size 400 --n 300

The same re-encoded JPEGs as bench_extract (every k-th file, size×size, quality 90). Each step of headstart's
path for lite0's eval transform (resize 256 bicubic, crop 224), timed over all files after one warm-up pass,
median of 3 passes: read the bytes; open + parse the header; decode the pixels (Pillow, full scale: draft mode
cannot go below 2× here); EXIF orientation and RGB check; resize + crop; normalise to float32 CHW. Then, for
comparison only (not headstart's path): libjpeg-turbo's M/8 DCT scaling through simplejpeg when it is
installed (decode straight to ≥ 256 px), with the same resize + crop. Results:
benchmarks/results/extract/profile_decode_<data><size>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import _resized  # noqa: E402 - the same images as the extraction benchmark

from headstart.data.decode import _exif_transpose, _to_rgb  # noqa: E402
from headstart.data.transforms import EvalTransform, _normalize, resize_center_crop  # noqa: E402
from headstart.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    spec = create_model("efficientnet_lite0").spec
    tf = EvalTransform(spec)
    mean, inv_std = np.asarray(spec.mean, np.float32), 1.0 / np.asarray(spec.std, np.float32)
    paths = _resized(args.data, args.n, args.size, Path(tempfile.mkdtemp()))
    blobs = [p.read_bytes() for p in paths]

    def steps() -> dict[str, float]:
        t: dict[str, float] = {k: 0.0 for k in ("read", "open_header", "decode", "exif_rgb", "resize_crop",
                                                "normalise")}
        for p in paths:
            t0 = time.perf_counter()
            data = p.read_bytes()
            t1 = time.perf_counter()
            im = Image.open(io.BytesIO(data))
            im.draft("RGB", (tf.draft_size, tf.draft_size))
            t2 = time.perf_counter()
            im.load()
            t3 = time.perf_counter()
            im = _to_rgb(_exif_transpose(im))
            t4 = time.perf_counter()
            im = resize_center_crop(im, spec.resize_size, spec.input_size, spec.interpolation)
            t5 = time.perf_counter()
            _normalize(im, mean, inv_std)
            t6 = time.perf_counter()
            for k, a, b in (("read", t0, t1), ("open_header", t1, t2), ("decode", t2, t3), ("exif_rgb", t3, t4),
                            ("resize_crop", t4, t5), ("normalise", t5, t6)):
                t[k] += b - a
        return {k: v * 1e3 / len(paths) for k, v in t.items()}

    steps()
    runs = [steps() for _ in range(3)]
    profile = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    profile["total"] = round(sum(profile.values()), 3)
    result: dict = {"images": len(paths), "size": args.size, "cpu_ms_per_image": profile}
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None:
        def turbo() -> float:
            t0 = time.perf_counter()
            for data in blobs:
                arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=tf.draft_size,
                                             min_width=tf.draft_size)
                im = resize_center_crop(Image.fromarray(arr), spec.resize_size, spec.input_size,
                                        spec.interpolation)
                _normalize(im, mean, inv_std)
            return (time.perf_counter() - t0) * 1e3 / len(blobs)

        turbo()
        result["simplejpeg_m8_decode_resize_normalise_ms"] = round(statistics.median(turbo() for _ in range(3)), 3)
        result["simplejpeg_version"] = simplejpeg.__version__
    out = ROOT / "benchmarks" / "results" / "extract" / f"profile_decode_{args.data.name}{args.size}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
