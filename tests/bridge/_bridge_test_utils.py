"""Paths shared by the Detectron2 plugin tests."""

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every shipped config, found by globbing, so configs added later are covered too.
SHIPPED_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
PROJECT_DIR = os.path.join(ROOT, "projects", "Det3DInDetectron2")
