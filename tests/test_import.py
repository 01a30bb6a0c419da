"""``import det3d`` alone registers every part, with or without Detectron2 installed."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHECK = """
import sys
import det3d  # nothing else is imported by name: the modules below were loaded by det3d itself
registries = sys.modules["det3d.modeling.registries"]
catalog = sys.modules["det3d.data.catalog"]
bridge = sys.modules["det3d.bridge.detectron2"]
for registry, name in [
    (registries.META_ARCH_REGISTRY, "GeneralizedRCNN3D"),
    (registries.META_ARCH_REGISTRY, "ProposalNetwork3D"),
    (registries.BACKBONE_REGISTRY, "build_resnet3d_fpn_backbone"),
    (registries.PROPOSAL_GENERATOR_REGISTRY, "RPN3D"),
    (registries.RPN_HEAD_REGISTRY, "StandardRPNHead3D"),
    (registries.ANCHOR_GENERATOR_REGISTRY, "DefaultAnchorGenerator3D"),
    (registries.ROI_HEADS_REGISTRY, "StandardROIHeads3D"),
    (registries.ROI_BOX_HEAD_REGISTRY, "FastRCNNConvFCHead3D"),
    (registries.ROI_MASK_HEAD_REGISTRY, "MaskRCNNConvUpsampleHead3D"),
]:
    registry.get(name)
assert "synthetic_train" in catalog.DatasetCatalog.list()
assert "det3d.evaluation" in sys.modules
print(bridge.HAS_DETECTRON2)
"""


def test_import_det3d_registers_everything():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    has_detectron2 = importlib.util.find_spec("detectron2") is not None
    assert done.stdout.strip().splitlines()[-1] == str(has_detectron2)


def test_without_detectron2_det3d_has_its_own_objects():
    from fvcore.common.config import CfgNode as FvCfgNode

    from det3d.bridge import detectron2 as bridge

    if bridge.HAS_DETECTRON2:
        pytest.skip("Detectron2 is installed: tests/bridge tests the shared objects")
    assert bridge.CfgNodeBase is FvCfgNode
    assert bridge.shared_registries() == {}
    assert bridge.shared_catalog_dicts() == (None, None)
    assert bridge.event_storage_stack() == []
    bridge.install()  # a no-op
