#!/usr/bin/env python
"""
Converts folders of image / instance-label volumes to a COCO-3D json file (docs/coco3d.md).

    python tools/convert_to_coco3d.py --images data/images --labels data/labels \
        --output data/coco3d.json [--spacing 2.0 0.5 0.5] [--class-map classes.json] \
        [--thing-classes nucleus mitotic] [--label-suffix _labels]

Image file names in the json are relative to --images (pass it as image_root when loading).
The file is written atomically.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from det3d.data.datasets.coco3d import convert_to_coco3d  # noqa: E402
from det3d.utils.file_io import write_json_atomic  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", required=True, help="folder of image volumes (.tif/.tiff/.zarr)")
    p.add_argument("--labels", required=True, help="folder of instance label volumes")
    p.add_argument("--output", required=True, help="json file to write")
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=None,
        help="voxel spacing in µm (default: from each image's metadata, else 1)",
    )
    p.add_argument(
        "--class-map",
        default=None,
        help="json instance id -> category (index or name), or a folder of <name>.json",
    )
    p.add_argument("--thing-classes", nargs="+", default=None, help="category names")
    p.add_argument("--label-suffix", default="", help="label file = <image name><suffix>.<ext>")
    args = p.parse_args(argv)
    data = convert_to_coco3d(
        image_dir=args.images,
        label_dir=args.labels,
        spacing=args.spacing,
        class_map=args.class_map,
        label_suffix=args.label_suffix,
        thing_classes=args.thing_classes,
    )
    write_json_atomic(args.output, data)
    print(
        f"Wrote {len(data['images'])} images, {len(data['annotations'])} instances, "
        f"{len(data['categories'])} categories to {args.output}"
    )


if __name__ == "__main__":
    main()
