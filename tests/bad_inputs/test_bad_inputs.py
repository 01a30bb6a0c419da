"""
Hostile and careless inputs, through det3d's real entry points (``tools/train_net.py`` with its
command line, ``tools/convert_to_coco3d.py``, and user code that registers a dataset and maps its
records), each in its own process (tests/bad_inputs/fork_runner.py). For every case: the exit
status, that the message names the file / key / value at fault, and that no file that existed
before the case changed (checksums of the inputs and of an earlier run's folder).

To add a case (e.g. for the predict command): append a ``Case`` to ``CASES`` with a ``setup``
that writes its inputs under ``w.inputs`` and returns the argv (or code) to run.
"""

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import pytest
import tifffile
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONVERT = os.path.join(ROOT, "tools", "convert_to_coco3d.py")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_runner.py")
INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml")
RPN_INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "rpn_R18_FPN_3d_instant_test.yaml")


class World:
    """The folders of a user: inputs, an earlier run, the outputs of new runs."""

    def __init__(self, root: str):
        self.root = root
        self.inputs = os.path.join(root, "inputs")
        self.earlier = os.path.join(root, "earlier_run")
        self.synthetic = os.path.join(root, "synthetic")
        self.outputs = os.path.join(root, "outputs")
        self.markers = os.path.join(root, "markers")  # where malicious files would leave a trace
        for d in (self.inputs, self.outputs, self.markers):
            os.makedirs(d, exist_ok=True)

    def path(self, *parts) -> str:
        p = os.path.join(self.inputs, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def train_net(self, name: str, *opts, flags=(), config=INSTANT) -> List[str]:
        out = os.path.join(self.outputs, name)
        return [TRAIN_NET, *flags, "--config-file", config, "SYNTHETIC.ROOT", self.synthetic,
                "OUTPUT_DIR", out, *opts]  # fmt: skip


@dataclass
class Case:
    name: str
    setup: Callable[[World], object]  # returns argv (list) or user code (str)
    must_say: List[str]  # regexes the output must match (the culprit named)
    returncode: str = "nonzero"  # or "zero"
    watch_earlier_run: bool = True
    check: Optional[Callable[[World, dict], None]] = None  # extra assertions
    also_watch: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- #
# Inputs
# ------------------------------------------------------------------------------------------- #
def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def _volumes(w: World, name: str, image=None, labels=None, image_spacing=(1.0, 0.5, 0.5)):
    """An image and a label folder with one volume ``a``; returns (image_dir, label_dir)."""
    from det3d.data import write_volume

    im_dir, lab_dir = w.path(name, "images"), w.path(name, "labels")
    os.makedirs(im_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    if image is None:
        image = np.full((4, 16, 16), 10, np.uint8)
        image[1:3, 4:9, 4:9] = 200
    if labels is None:
        labels = np.zeros((4, 16, 16), np.uint8)
        labels[1:3, 4:9, 4:9] = 1
    if image is not False:
        write_volume(os.path.join(im_dir, "a.tif"), image, spacing=image_spacing)
    if labels is not False:
        lab_path = os.path.join(lab_dir, "a.tif")
        if isinstance(labels, np.ndarray) and labels.dtype in (np.int16, np.float64):
            tifffile.imwrite(lab_path, labels, metadata={"axes": "ZYX"}, photometric="minisblack")
        else:
            write_volume(lab_path, labels)
    return im_dir, lab_dir


def _register_and_map(name, image_dir, label_dir, **kwargs) -> str:
    """User code: register a label-volume dataset, then map every record for training."""
    return f"""
from det3d.data import DatasetCatalog, DatasetMapper3D, register_label_volume_dataset
register_label_volume_dataset({name!r}, {image_dir!r}, {label_dir!r},
                              metadata={{"thing_classes": ["nucleus", "cell"]}}, **{kwargs!r})
mapper = DatasetMapper3D(is_train=True)
for record in DatasetCatalog.get({name!r}):
    out = mapper(record)
print("mapped", len(out["instances"]), "instances")
"""


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _marker(w: World, name: str) -> str:
    return os.path.join(w.markers, name)


def _no_marker(name: str):
    def check(w: World, result: dict) -> None:
        assert not os.path.exists(_marker(w, name)), "the malicious file's code ran"

    return check


def _evil_yaml(w: World):
    marker = _marker(w, "yaml_ran")
    path = _write(w.path("evil.yaml"), f'_BASE_: "{INSTANT}"\nSOLVER: !!python/object/apply:'
                  f'os.system ["touch {marker}"]\n')  # fmt: skip
    return w.train_net("evil_yaml", config=path)


def _evil_pickle(w: World):
    path = w.path("model_zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(3)}, "x": _RunsCode(_marker(w, "pkl_ran"))}, f)
    return w.train_net("evil_pkl", "MODEL.WEIGHTS", path, flags=["--eval-only"])


def _evil_pth(w: World):
    path = w.path("model_evil.pth")
    torch.save({"model": {"w": torch.zeros(3)}, "x": _RunsCode(_marker(w, "pth_ran"))}, path)
    return w.train_net("evil_pth", "MODEL.WEIGHTS", path, flags=["--eval-only"])


def _truncated_checkpoint(w: World):
    with open(os.path.join(w.earlier, "model_final.pth"), "rb") as f:
        data = f.read()
    path = w.path("truncated.pth")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return w.train_net("truncated_ckpt", "MODEL.WEIGHTS", path, flags=["--eval-only"])


def _other_architecture(w: World):
    from det3d.config import get_cfg
    from det3d.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(RPN_INSTANT)
    path = w.path("rpn_only.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return w.train_net("other_arch", "MODEL.WEIGHTS", path, flags=["--eval-only"])


def _copy_of_earlier_run(w: World, name: str) -> str:
    import shutil

    dst = os.path.join(w.root, name)
    shutil.copytree(w.earlier, dst)
    return dst


def _eval_only_into_earlier_run(w: World):
    run = _copy_of_earlier_run(w, "earlier_run_copy")
    return [TRAIN_NET, "--eval-only", "--config-file", INSTANT, "SYNTHETIC.ROOT", w.synthetic,
            "OUTPUT_DIR", run, "MODEL.WEIGHTS", os.path.join(run, "model_final.pth")]  # fmt: skip


def _check_earlier_results_kept(w: World, result: dict) -> None:
    run = os.path.join(w.root, "earlier_run_copy")
    inference = os.path.join(run, "inference") + os.sep
    before = {p: h for p, h in result["before"].items() if p.startswith(inference)}
    assert len(before) >= 4, sorted(result["before"])  # coco3d, matching, seg results
    after = result["after"]
    for path, digest in result["before"].items():  # the inputs and the original run: untouched
        if not path.startswith(inference):
            assert after.get(path) == digest, path
    for path, digest in before.items():
        root, ext = os.path.splitext(path)
        assert after.get(f"{root}.1{ext}") == digest, f"{path} of the earlier run was not kept"
        assert path in after  # and the new results are in place
    assert os.path.isfile(os.path.join(run, "inference", "synthetic_tiny_val", "seg_results.json"))


def _tiff_with_spacing(w: World, spacing):
    im_dir, lab_dir = _volumes(w, "neg_spacing")
    tifffile.imwrite(os.path.join(im_dir, "a.tif"), np.zeros((4, 16, 16), np.uint8),
                     metadata={"axes": "ZYX", "spacing": list(spacing)}, photometric="minisblack")
    return _register_and_map("neg_spacing", im_dir, lab_dir)


def _truncated_image(w: World):
    im_dir, lab_dir = _volumes(w, "cut", image=np.random.rand(4, 16, 16))  # float64: plain TIFF
    path = os.path.join(im_dir, "a.tif")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    return _register_and_map("cut", im_dir, lab_dir)


def _zero_size_labels(w: World):
    im_dir, lab_dir = _volumes(w, "zero", labels=False)
    tifffile.imwrite(os.path.join(lab_dir, "a.tif"), np.zeros((0, 16, 16), np.uint8))
    return _register_and_map("zero", im_dir, lab_dir)


def _huge_ids(w: World):
    labels = np.zeros((4, 16, 16), np.int32)
    labels[1:3, 4:9, 4:9] = 2**31 - 1
    labels[0, 10:14, 10:14] = 7
    im_dir, lab_dir = _volumes(w, "huge_ids", labels=labels)
    return _register_and_map("huge_ids", im_dir, lab_dir)


def _coco3d_json(w: World, name: str, image_extra=None, annotation_image=0):
    from det3d.structures.rle import encode_rle

    mask = np.zeros((4, 16, 16), bool)
    mask[1:3, 4:9, 4:9] = True
    image = {"id": 0, "file_name": "a.tif", "depth": 4, "height": 16, "width": 16,
             **(image_extra or {})}  # fmt: skip
    data = {
        "images": [image],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [{"id": 1, "image_id": annotation_image, "category_id": 1,
                         "bbox": [4, 4, 1, 5, 5, 2], "segmentation": encode_rle(mask),
                         "iscrowd": 0}],  # fmt: skip
    }
    path = _write(w.path(name, "coco3d.json"), json.dumps(data))
    return f"""
from det3d.data import DatasetCatalog, register_coco3d_instances
register_coco3d_instances({name!r}, {{}}, {path!r}, {os.path.dirname(path)!r})
print(len(DatasetCatalog.get({name!r})))
"""


def _cycle(w: World):
    _write(w.path("cycle", "a.yaml"), '_BASE_: "b.yaml"\n')
    _write(w.path("cycle", "b.yaml"), '_BASE_: "a.yaml"\n')
    return w.train_net("cycle", config=w.path("cycle", "a.yaml"))


NOT_THERE = "/nonexistent/det3d/folder"

CASES = [
    # ---- configs and the command line
    Case("config_missing", lambda w: w.train_net("x", config=w.path("missing.yaml")),
         [r"missing\.yaml"]),
    Case("unknown_override_key", lambda w: w.train_net("x", "SOLVER.NO_SUCH_KEY", "1"),
         [r"SOLVER\.NO_SUCH_KEY"]),
    Case("odd_overrides", lambda w: w.train_net("x", "SOLVER.MAX_ITER"), [r"KEY VALUE pairs"]),
    Case("broken_yaml", lambda w: w.train_net(
        "x", config=_write(w.path("broken.yaml"), "MODEL: [unclosed\n")), [r"broken\.yaml"]),
    Case("unknown_key_in_file", lambda w: w.train_net(
        "x", config=_write(w.path("typo.yaml"), f'_BASE_: "{INSTANT}"\nSOLVER:\n  NOPE: 1\n')),
         [r"SOLVER\.NOPE", r"typo\.yaml"]),
    Case("base_cycle", _cycle, [r"_BASE_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"]),
    Case("yaml_with_code", _evil_yaml, [r"evil\.yaml"], check=_no_marker("yaml_ran")),
    Case("unknown_dataset", lambda w: w.train_net("x", "DATASETS.TRAIN", "('no_such_set',)"),
         [r"no_such_set"]),
    Case("unknown_meta_arch", lambda w: w.train_net("x", "MODEL.META_ARCHITECTURE", "NoSuchArch"),
         [r"NoSuchArch"]),
    Case("device_cuda_on_cpu_torch", lambda w: w.train_net("x", "MODEL.DEVICE", "cuda"),
         [r"MODEL\.DEVICE is 'cuda'"]),
    Case("device_not_a_device", lambda w: w.train_net("x", "MODEL.DEVICE", "gpu0"),
         [r"MODEL\.DEVICE 'gpu0'"]),
    Case("test_aug", lambda w: w.train_net("x", "TEST.AUG.ENABLED", "True"),
         [r"TEST\.AUG\.ENABLED"]),
    Case("precise_bn", lambda w: w.train_net("x", "TEST.PRECISE_BN.ENABLED", "True"),
         [r"TEST\.PRECISE_BN\.ENABLED"]),
    Case("precomputed_proposals",
         lambda w: w.train_net("x", "MODEL.PROPOSAL_GENERATOR.NAME", "PrecomputedProposals"),
         [r"MODEL\.PROPOSAL_GENERATOR\.NAME"]),
    Case("load_proposals", lambda w: w.train_net("x", "MODEL.LOAD_PROPOSALS", "True"),
         [r"MODEL\.LOAD_PROPOSALS"]),
    Case("target_spacing_zero",
         lambda w: w.train_net("x", "INPUT.TARGET_SPACING", "[0.0, 0.5, 0.5]"),
         [r"INPUT\.TARGET_SPACING.*0\.0"]),
    Case("target_spacing_length", lambda w: w.train_net("x", "INPUT.TARGET_SPACING", "[1.0, 1.0]"),
         [r"INPUT\.TARGET_SPACING.*\[1\.0, 1\.0\]"]),
    Case("unknown_evaluator", lambda w: w.train_net(
        "x", "MODEL.WEIGHTS", os.path.join(w.earlier, "model_final.pth"), "TEST.EVALUATORS",
        "['coco3d', 'f1']", flags=["--eval-only"]), [r"'f1' in TEST\.EVALUATORS"]),
    Case("eval_only_without_weights", lambda w: w.train_net("x", flags=["--eval-only"]),
         [r"--eval-only needs weights"]),
    # ---- checkpoints
    Case("weights_missing", lambda w: w.train_net("x", "MODEL.WEIGHTS", w.path("nope.pth")),
         [r"nope\.pth.*not found"]),
    Case("weights_garbage", lambda w: w.train_net(
        "x", "MODEL.WEIGHTS", _write(w.path("garbage.pth"), "not a checkpoint\n" * 50)),
         [r"garbage\.pth.*corrupt"]),
    Case("weights_truncated", _truncated_checkpoint, [r"truncated\.pth.*corrupt"]),
    Case("weights_pickle_with_code", _evil_pickle, [r"model_zoo\.pkl.*untrusted"],
         check=_no_marker("pkl_ran")),
    Case("weights_torch_file_with_code", _evil_pth, [r"model_evil\.pth.*untrusted"],
         check=_no_marker("pth_ran")),
    Case("weights_of_another_model", _other_architecture,
         [r"rpn_only\.pth.*of the model's \d+ tensors loaded.*missing"]),
    # ---- earlier results
    Case("train_into_earlier_run", lambda w: [TRAIN_NET, "--config-file", INSTANT, "OUTPUT_DIR",
                                              w.earlier, "SYNTHETIC.ROOT", w.synthetic],
         [r"already holds the checkpoints of an earlier run"]),
    Case("eval_only_into_earlier_run", _eval_only_into_earlier_run, [r"kept as .*\.1\.json"],
         returncode="zero", check=_check_earlier_results_kept,
         also_watch=[os.path.join("earlier_run_copy", "inference")]),
    # ---- datasets: registration, files, records
    Case("spacing_zero_at_registration", lambda w: _register_and_map(
        "sp0", *_volumes(w, "sp0"), spacing=(0.0, 0.5, 0.5)),
         [r"dataset 'sp0'.*spacing \(0\.0, 0\.5, 0\.5\)"]),
    Case("spacing_wrong_length", lambda w: _register_and_map(
        "sp2", *_volumes(w, "sp2"), spacing=(0.5, 0.5)), [r"dataset 'sp2'.*\(0\.5, 0\.5\)"]),
    Case("negative_spacing_in_tiff", lambda w: _tiff_with_spacing(w, (-1.0, 0.5, 0.5)),
         [r"neg_spacing/images/a\.tif.*spacing \(-1\.0"]),
    Case("class_outside_thing_classes", lambda w: _register_and_map(
        "cm", *_volumes(w, "cm"), class_map={"1": 5}),
         [r"instance 1: category 5 is outside thing_classes"]),
    Case("class_name_unknown", lambda w: _register_and_map(
        "cn", *_volumes(w, "cn"), class_map={"1": "mitochondrion"}),
         [r"'mitochondrion' \(instance 1\)"]),
    Case("class_map_not_json", lambda w: _register_and_map(
        "cj", *_volumes(w, "cj"), class_map=_write(w.path("cj", "cmap.json"), "{1: oops")),
         [r"cmap\.json: not valid JSON"]),
    Case("truncated_image", _truncated_image, [r"cut/images/a\.tif: cannot read as TIFF"]),
    Case("zero_size_label_volume", _zero_size_labels,
         [r"zero/labels/a\.tif: the volume has a zero-size axis"]),
    Case("image_label_shape_mismatch", lambda w: _register_and_map(
        "mm", *_volumes(w, "mm", labels=np.zeros((4, 16, 15), np.uint8))),
         [r"mm/images/a\.tif.*mm/labels/a\.tif"]),
    Case("negative_labels", lambda w: _register_and_map(
        "neg", *_volumes(w, "neg", labels=np.full((4, 16, 16), -1, np.int16))),
         [r"neg/labels/a\.tif: label volume holds negative values"]),
    Case("fractional_labels", lambda w: _register_and_map(
        "frac", *_volumes(w, "frac", labels=np.full((4, 16, 16), 1.5))),
         [r"frac/labels/a\.tif: .*non-integer"]),
    Case("nan_voxels", lambda w: _register_and_map(
        "nan", *_volumes(w, "nan", image=np.full((4, 16, 16), np.nan, np.float32))),
         [r"nan/images/a\.tif: \d+ NaN/Inf voxels"]),
    Case("image_without_labels", lambda w: _register_and_map(
        "nolab", *_volumes(w, "nolab", labels=False)), [r"nolab/images/a\.tif: no label volume"]),
    Case("image_folder_missing", lambda w: _register_and_map("nodir", NOT_THERE, NOT_THERE),
         [rf"{NOT_THERE}: no such directory"]),
    Case("label_ids_near_2_31", _huge_ids, [r"mapped 2 instances"], returncode="zero"),
    Case("coco3d_unknown_image", lambda w: _coco3d_json(w, "cu", annotation_image=99),
         [r"cu/coco3d\.json: annotation 1 names unknown image 99"]),
    Case("coco3d_zero_spacing", lambda w: _coco3d_json(w, "cz", {"spacing": [0, 1, 1]}),
         [r"cz/coco3d\.json: image 0.*spacing \(0\.0, 1\.0, 1\.0\)"]),
    Case("convert_zero_spacing", lambda w: [CONVERT, "--images", _volumes(w, "cv")[0], "--labels",
                                            w.path("cv", "labels"), "--output",
                                            w.path("cv", "out.json"), "--spacing", "0", "1", "1"],
         [r"cv/images.*spacing \(0\.0, 1\.0, 1\.0\)"]),
]


# ------------------------------------------------------------------------------------------- #
# Running them
# ------------------------------------------------------------------------------------------- #
def _run(cases: List[dict], tmp: str, timeout: float = 900) -> dict:
    cases_file, results_file = os.path.join(tmp, "cases.json"), os.path.join(tmp, "results.json")
    with open(cases_file, "w") as f:
        json.dump(cases, f)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, RUNNER, cases_file, results_file], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(results_file) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from det3d.data import DatasetCatalog, set_synthetic_root

    w = World(str(tmp_path_factory.mktemp("user")))
    set_synthetic_root(w.synthetic)  # written once here, read by every case
    try:
        for split in ("synthetic_tiny_train", "synthetic_tiny_val"):
            DatasetCatalog.get(split)
    finally:
        set_synthetic_root(None)
    earlier = _run([{"name": "earlier_run", "cwd": w.root,
                     "argv": [TRAIN_NET, "--config-file", INSTANT, "OUTPUT_DIR", w.earlier,
                              "SYNTHETIC.ROOT", w.synthetic]}], w.root)["earlier_run"]  # fmt: skip
    assert earlier["returncode"] == 0, earlier["output"][-3000:]
    cases = []
    for case in CASES:
        what = case.setup(w)
        entry = {"name": case.name, "cwd": w.root, "timeout": 300, "env": {"OMP_NUM_THREADS": "1"}}
        entry["code" if isinstance(what, str) else "argv"] = what
        entry["watch"] = [w.inputs, w.synthetic] + ([w.earlier] if case.watch_earlier_run else [])
        entry["watch"] += [os.path.join(w.root, p) for p in case.also_watch]
        cases.append(entry)
    return w, _run(cases, w.root)


def test_at_least_30_kinds():
    assert len({c.name for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(results, case):
    import re

    w, all_results = results
    result = all_results[case.name]
    output = result["output"]
    if case.returncode == "zero":
        assert result["returncode"] == 0, output[-3000:]
    else:
        assert result["returncode"] not in (0, "timeout"), output[-3000:]
    for pattern in case.must_say:
        assert re.search(pattern, output), f"{pattern!r} not in:\n{output[-3000:]}"
    if case.check is not None:
        case.check(w, result)
        return
    before, after = result["before"], result["after"]
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files that existed before the case changed or vanished: {changed}"
