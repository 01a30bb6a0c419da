"""
Scoring for ``bench/peers.py``, in det3d's venv: every method's label volumes go through det3d's
own evaluators (``InstanceMatchingEvaluator``, ``SEGEvaluator``), which write the same
``matching_results.json`` / ``seg_results.json`` that ``tools/train_net.py`` writes for det3d;
:func:`read_scores` reads the table's figures from those files for all three methods alike.
"""

import os
from typing import Dict

from det3d.data import DatasetCatalog
from det3d.data.io import read_labels
from det3d.evaluation import InstanceMatchingEvaluator, SEGEvaluator
from det3d.utils.file_io import read_json

# the figures read_scores gives, each with the name the peers table prints for it
SCORE_NAMES = {
    "SEG": "SEG",
    "f1@0.5": "F1@0.5",
    "f1@0.7": "F1@0.7",
    "precision@0.5": "P@0.5",
    "recall@0.5": "R@0.5",
}
SCORE_KEYS = tuple(SCORE_NAMES)


def record_stem(record: dict) -> str:
    """``vol_000`` for ``.../images/vol_000.tif``: the name a peer's prediction file carries."""
    name = os.path.basename(str(record["file_name"]).rstrip("/"))
    for ext in (".tiff", ".tif", ".zarr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def score_label_folder(test_dataset: str, pred_dir: str, output_dir: str) -> Dict[str, float]:
    """
    Scores ``pred_dir/<stem>.tif`` (one label volume per record of ``test_dataset``) with
    det3d's matching and SEG evaluators; writes their JSON files into ``output_dir``.

    Raises:
        FileNotFoundError: naming the first test volume without a prediction.
    """
    records = DatasetCatalog.get(test_dataset)
    preds = {}
    for r in records:
        path = os.path.join(pred_dir, record_stem(r) + ".tif")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{pred_dir}: no prediction {os.path.basename(path)} for test volume "
                f"{r['file_name']} of {test_dataset}"
            )
        preds[r["image_id"]] = (r, path)
    os.makedirs(output_dir, exist_ok=True)
    evaluators = [
        InstanceMatchingEvaluator(test_dataset, output_dir=output_dir, distributed=False),
        SEGEvaluator(test_dataset, output_dir=output_dir, distributed=False),
    ]
    for ev in evaluators:
        ev.reset()
    for image_id, (r, path) in preds.items():
        inputs = [{"image_id": image_id, "file_name": r["file_name"]}]
        outputs = [{"instance_labels": read_labels(path)}]
        for ev in evaluators:
            ev.process(inputs, outputs)
    for ev in evaluators:
        ev.evaluate()
    return read_scores(output_dir)


def read_scores(folder: str) -> Dict[str, float]:
    """
    The table's figures from an evaluation folder (``matching_results.json``,
    ``seg_results.json``): SEG, F1 at IoU 0.5 and 0.7, precision and recall at 0.5.
    """
    matching = read_json(os.path.join(folder, "matching_results.json"), "matching results")
    seg = read_json(os.path.join(folder, "seg_results.json"), "SEG results")
    metrics = matching.get("metrics", {})
    out = {"SEG": seg.get("SEG")}
    for thr in ("0.5", "0.7"):
        if thr not in metrics:
            raise KeyError(
                f"{folder}/matching_results.json has no IoU threshold {thr} (has "
                f"{sorted(metrics)}); TEST.MATCHING_IOU_THRESHOLDS must include 0.5 and 0.7"
            )
    out["f1@0.5"] = metrics["0.5"]["f1"]
    out["f1@0.7"] = metrics["0.7"]["f1"]
    out["precision@0.5"] = metrics["0.5"]["precision"]
    out["recall@0.5"] = metrics["0.5"]["recall"]
    out["n_objects"] = seg.get("n_objects")
    return out
