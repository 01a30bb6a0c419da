#!/usr/bin/env python
"""
Segments volumes with a trained det3d model: the ``det3d-predict`` command (see
``det3d/engine/predict_cli.py`` and README "Segment your own volumes").

.. code-block:: none

    python tools/predict.py --config-file configs/Synthetic/mask_rcnn_R18_FPN_3d_cpu.yaml \\
        --input vol.tif folder/ big.zarr --output out/ MODEL.WEIGHTS output/demo/model_final.pth
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from det3d.engine.predict_cli import main

if __name__ == "__main__":
    sys.exit(main())
