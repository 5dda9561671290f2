"""Render every anomaly family on a frame of the procedural demo video: docs/anomaly_families.png.

Parameters: --out (default docs/anomaly_families.png), --seed (default 0), --tile (default 192),
--families (default: all of them).

The frame goes the way the pipeline's frames go (demo video rendered to mp4, frame extracted
to PNG); each tile is the ETL crop of one family's output, as the model sees it.

Example:
    .venv/bin/python scripts/render_family_grid.py --tile 192
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "anomaly_families.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--families", nargs="+", default=None, help="keys of swan_anomaly.anomalies.FAMILIES")
    return parser


def main(argv: list[str] | None = None) -> Path:
    from swan_anomaly.anomalies import family_grid
    from swan_anomaly.images import decode_image, encode_png
    from swan_anomaly.video import extract_frames, render_demo_video

    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # 4 frames at 1 fps; at t = 1 s of a 4-s clip the swan glides near the crop's centre
        video = render_demo_video(Path(tmp) / "swans.mp4", seconds=4.0, fps=1.0)
        frame = next(f for f in extract_frames(video, Path(tmp) / "frames", every_seconds=1.0) if f.frame_index == 1)
        image = decode_image(Path(frame.path).read_bytes(), name=frame.path)
    grid = family_grid(image, seed=args.seed, families=args.families, tile=args.tile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(encode_png(grid))
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]} px, {args.out.stat().st_size // 1024} KiB)")
    return args.out


if __name__ == "__main__":
    main()
