"""
det3d's coupling to other frameworks. :mod:`det3d.bridge.detectron2` is the one module of det3d
that imports detectron2; everything det3d shares with Detectron2 is decided there.
"""
