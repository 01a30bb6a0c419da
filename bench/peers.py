"""
det3d and its peers side by side on each synthetic family's held-out split (issue 14, point 5):

.. code-block:: none

    python bench/peers.py [--family synthetic|toy3d|all] [--minutes 30] [--threads 2]
        [--output output/peers] [--reuse] [--methods det3d,cellpose,watershed]
        [--det3d-output [FAMILY=]DIR ...] [--peers-venv /work/scratch/peers-venv]
        [--train-volumes N --test-volumes N]

Each method trains on the family's training split and is scored on its test split, with the same
training volumes, the same wall-clock budget (``--minutes``) and the same torch threads:

* **det3d**, planned config: ``tools/plan.py --train <train> --test <test> --budget-minutes M``
  then ``tools/train_net.py`` (``bench/peers/det3d_part.py``); ``--det3d-output`` scores a run
  trained before instead.
* **Cellpose 3** (``cellpose==3.1.1.2``) trained from scratch on 2D slices of the training
  volumes, time-boxed to the budget, then run in 3D-flow mode and in 2D-with-stitching mode; the
  mode with the better SEG (then F1@0.5) is the table's row (``bench/peers/cellpose_run.py``).
* **Watershed**: Otsu threshold, distance transform, seeded watershed; nothing trained
  (``bench/peers/watershed_run.py``).

Cellpose and the watershed run in a scratch venv outside the repository (``--peers-venv``), made
on first use with ``torch==2.13.0`` installed first (``bench/peers/scratch_venv.py``): det3d
depends on neither. Every method's label volumes are scored by det3d's own evaluators
(``InstanceMatchingEvaluator``, ``SEGEvaluator``; ``bench/peers/score.py``).

Results go to ``<output>/<family>/<method>/``; a method's folder appears only when the method has
finished (peers run in ``<method>.partial`` first). With ``--reuse`` a finished method whose
request (splits, volumes, budget, threads) matches is scored again without rerunning; without it,
an existing result is an error, never overwritten. ``--train-volumes`` / ``--test-volumes`` take
the first N volumes of each split (through a folder of links, named to det3d as a ``folder:``
spec), for quick checks.

Prints one table per family: method, SEG, F1@0.5, F1@0.7, precision@0.5, recall@0.5, training
minutes (wall clock, as each method measured it) and inference seconds per volume (mean over the
test volumes after the first, which is warm-up; det3d's evaluation likewise leaves out its first
volumes). Under each table: 95% intervals of each row's SEG and F1@0.5, and of det3d's lead over
each peer, from drawing the test volumes with replacement 2000 times (``bench/peers/intervals.py``;
a split of ten volumes leaves SEG uncertain by about +-0.03).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(REPO, "bench", "peers")
sys.path.insert(0, REPO)
sys.path.insert(0, PEERS_DIR)

from det3d_part import MARKER, det3d_summary, train_det3d  # noqa: E402
from intervals import format_intervals, read_per_volume, volume_bootstrap  # noqa: E402
from score import SCORE_KEYS, SCORE_NAMES, record_stem, score_label_folder  # noqa: E402
from scratch_venv import PINS, ensure_peers_venv, venv_python  # noqa: E402

from det3d.data import DatasetCatalog, MetadataCatalog, register_dataset_specs  # noqa: E402
from det3d.utils.file_io import read_json, write_json_atomic  # noqa: E402

FAMILIES = {
    "synthetic": ("synthetic_train", "synthetic_val"),
    "toy3d": ("toy3d_train", "toy3d_test"),
}
METHODS = ("det3d", "cellpose", "watershed")
LABELS = {"det3d": "det3d (planned)", "cellpose": "Cellpose 3", "watershed": "watershed"}
MODE_NAMES = {"3d": "3D flows", "stitch": "2D + stitching", "watershed": ""}


def _subset_spec(name: str, records: list, n: int, root: str) -> str:
    """A ``folder:`` spec over links to the first ``n`` records of ``name`` (for quick runs)."""
    folder = os.path.join(root, f"{name}_first{n}")
    for sub in ("images", "labels", "classes"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for r in records[:n]:
        stem = record_stem(r)
        for sub, src in (("images", r["file_name"]), ("labels", r["instance_label_file"])):
            dst = os.path.join(folder, sub, stem + os.path.splitext(src)[1])
            if not os.path.lexists(dst):
                os.symlink(os.path.abspath(src), dst)
        classes = {str(k): int(v) for k, v in (r.get("instance_classes") or {}).items()}
        write_json_atomic(os.path.join(folder, "classes", stem + ".json"), classes)
    meta = MetadataCatalog.get(name)
    spacing = ":".join(f"{s:g}" for s in records[0]["spacing"])
    return (
        f"folder:images={folder}/images,labels={folder}/labels,classes="
        f"{':'.join(meta.thing_classes)},class_map={folder}/classes,spacing={spacing}"
    )


def resolve_split(name: str, n: int, data_root: str):
    """``(det3d dataset name, records)`` of a split, or of its first ``n`` volumes (n > 0)."""
    records = DatasetCatalog.get(name)
    if n <= 0 or n >= len(records):
        return name, records
    missing = [r["file_name"] for r in records[:n] if "instance_label_file" not in r]
    if missing:
        raise ValueError(f"{name}: --*-volumes needs label-volume records; {missing[0]} has none")
    spec = _subset_spec(name, records, n, data_root)
    register_dataset_specs([spec])
    return spec, DatasetCatalog.get(spec)


def family_setup(family: str, args, family_dir: str) -> dict:
    train_split, test_split = FAMILIES[family]
    data_root = os.path.join(family_dir, "data")
    train, train_records = resolve_split(train_split, args.train_volumes, data_root)
    test, test_records = resolve_split(test_split, args.test_volumes, data_root)
    spacings = {tuple(float(s) for s in r["spacing"]) for r in train_records + test_records}
    if len(spacings) != 1:
        raise ValueError(f"{family}: the volumes have several spacings {sorted(spacings)}")
    manifest = {
        "family": family,
        "spacing": list(spacings.pop()),
        "train": [
            {"name": record_stem(r), "image": r["file_name"], "labels": r["instance_label_file"]}
            for r in train_records
        ],
        "test": [{"name": record_stem(r), "image": r["file_name"]} for r in test_records],
    }
    write_json_atomic(os.path.join(family_dir, "manifest.json"), manifest)
    return {
        "family": family,
        "train": train,
        "test": test,
        "train_desc": (
            train_split
            if train == train_split
            else f"the first {len(train_records)} " f"of {train_split}"
        ),
        "test_desc": (
            test_split
            if test == test_split
            else f"the first {len(test_records)} " f"of {test_split}"
        ),
        "train_volumes": [e["name"] for e in manifest["train"]],
        "test_volumes": [e["name"] for e in manifest["test"]],
        "manifest": os.path.join(family_dir, "manifest.json"),
    }


def request_of(method: str, fam: dict, args) -> dict:
    req = {k: fam[k] for k in ("family", "train", "test", "train_volumes", "test_volumes")}
    req.update(method=method, threads=args.threads)
    if method != "watershed":  # nothing is trained: the budget does not apply
        req["minutes"] = args.minutes
    if method != "det3d":
        req["pins"] = PINS
    return req


def check_reusable(folder: str, request: dict, args) -> bool:
    """True when ``folder`` holds a finished run of ``request`` to reuse; raises on conflicts."""
    path = os.path.join(folder, "request.json")
    if not os.path.isdir(folder):
        return False
    if not os.path.isfile(path):
        raise FileExistsError(f"{folder} exists without request.json (not a finished bench run)")
    return _same_request(folder, read_json(path, "bench request"), request, args)


def _same_request(folder: str, old: dict, request: dict, args) -> bool:
    if not args.reuse:
        raise FileExistsError(
            f"{folder} holds a finished {request['method']} run; pass --reuse to score it "
            "again, or name another --output"
        )
    if old != request:
        keys = sorted(k for k in set(old) | set(request) if old.get(k) != request.get(k))
        diff = {k: (old.get(k), request.get(k)) for k in keys}
        raise ValueError(f"{folder} was run with other settings (old, new): {diff}")
    return True


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_peer(method: str, fam: dict, args, family_dir: str) -> str:
    """Runs a peer's script in the scratch venv into ``<method>.partial``, then renames it."""
    folder = os.path.join(family_dir, method)
    request = request_of(method, fam, args)
    if check_reusable(folder, request, args):
        print(f"[{fam['family']}] {method}: reusing {folder}")
        return folder
    ensure_peers_venv(args.peers_venv)
    partial = folder + ".partial"
    if os.path.isdir(partial):  # a run killed before it finished: never presented as a result
        shutil.rmtree(partial)
    os.makedirs(partial)
    script = os.path.join(PEERS_DIR, f"{method}_run.py")
    cmd = [venv_python(args.peers_venv), script, "--manifest", fam["manifest"], "--output", partial]
    if method == "cellpose":
        cmd += ["--minutes", f"{args.minutes:g}", "--threads", str(args.threads)]
    env = thread_env(args.threads)
    env["CELLPOSE_LOCAL_MODELS_PATH"] = os.path.join(os.path.abspath(args.peers_venv), "models")
    print(f"[{fam['family']}] {method}: running, log in {partial}/log.txt", flush=True)
    with open(os.path.join(partial, "log.txt"), "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        with open(os.path.join(partial, "log.txt")) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"{method} failed (exit {rc}); log {partial}/log.txt:\n{tail}")
    write_json_atomic(os.path.join(partial, "request.json"), request)
    os.replace(partial, folder)
    return folder


def _mean_after_warmup(seconds: dict) -> float:
    values = list(seconds.values())
    values = values[1:] if len(values) > 1 else values
    return sum(values) / len(values)


def peer_rows(method: str, folder: str, test: str) -> list:
    """Scores every mode of a finished peer run; returns its rows, best first."""
    run = read_json(os.path.join(folder, "run.json"), f"{method} run.json")
    rows = []
    for mode, info in run["modes"].items():
        pred, evaluation = os.path.join(folder, info["pred"]), os.path.join(folder, f"eval_{mode}")
        scores = score_label_folder(test, pred, evaluation)
        rows.append(
            {
                "method": method,
                "mode": mode,
                "scores": scores,
                "eval_folder": evaluation,
                "train_minutes": run["train_seconds"] / 60.0,
                "infer_seconds_per_volume": _mean_after_warmup(info["seconds_per_volume"]),
                "detail": run.get("training", run.get("params", {})),
            }
        )
    rows.sort(key=lambda r: (r["scores"]["SEG"] or 0.0, r["scores"]["f1@0.5"]), reverse=True)
    return rows


def _volumes_of(dataset: str) -> list:
    """The real paths of a dataset's volumes (a spec is registered first)."""
    register_dataset_specs([dataset])
    return sorted(os.path.realpath(r["file_name"]) for r in DatasetCatalog.get(dataset))


def det3d_row(fam: dict, args, family_dir: str) -> dict:
    """Trains det3d (or reads ``--det3d-output``) and returns its row."""
    given = args.det3d_output.get(fam["family"])
    if given:
        folder, how = given, "scored from --det3d-output"
    else:
        folder = os.path.join(family_dir, "det3d")
        request = request_of("det3d", fam, args)
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, MARKER)):
            raise FileExistsError(
                f"{folder}: an unfinished det3d run (no {MARKER}); remove it, or score a finished "
                f"run with --det3d-output {fam['family']}={folder}"
            )
        if check_reusable_det3d(folder, request, args):
            how = f"reused {folder}"
        else:
            config = os.path.join(family_dir, f"det3d_{fam['family']}.yaml")
            env = thread_env(args.threads)
            env["PYTHONPATH"] = os.pathsep.join([REPO] + [env.get("PYTHONPATH", "")]).rstrip(":")
            times = train_det3d(REPO, fam["train"], fam["test"], args.minutes, config, folder, env)
            write_json_atomic(os.path.join(folder, MARKER), {"request": request, **times})
            how = f"trained now ({times['plan_seconds']:.0f} s planning, not in the budget)"
    summary = det3d_summary(folder)
    if _volumes_of(summary["test"]) != _volumes_of(fam["test"]):
        raise ValueError(
            f"{folder} was evaluated on {summary['test']!r}, not on the test volumes of this "
            f"bench ({fam['test_desc']})"
        )
    return {
        "method": "det3d",
        "mode": "",
        "scores": summary["scores"],
        "eval_folder": summary["eval_folder"],
        "train_minutes": summary["train_minutes"],
        "infer_seconds_per_volume": summary["infer_seconds_per_volume"],
        "detail": {
            "iterations": summary["iterations"],
            "MAX_ITER": summary["max_iter"],
            "run": folder,
            "how": how,
        },
    }


def check_reusable_det3d(folder: str, request: dict, args) -> bool:
    if not os.path.isdir(folder):
        return False
    old = read_json(os.path.join(folder, MARKER), "bench marker")["request"]
    return _same_request(folder, old, request, args)


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(fam: dict, rows: list, others: list, args) -> None:
    head = ("method", *SCORE_NAMES.values(), "train min", "infer s/vol")
    print(
        f"\n{fam['family']}: trained on {fam['train_desc']} ({len(fam['train_volumes'])} volumes), "
        f"tested on {fam['test_desc']} ({len(fam['test_volumes'])} volumes); budget "
        f"{args.minutes:g} min per method, {args.threads} torch thread(s), "
        f"{len(os.sched_getaffinity(0))} core(s) visible"
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        mode = MODE_NAMES.get(r["mode"])
        name = LABELS[r["method"]] + (f" ({mode})" if mode else "")
        cells = [name] + [_fmt(r["scores"][k], ".3f") for k in SCORE_KEYS]
        cells += [_fmt(r["train_minutes"], ".1f"), _fmt(r["infer_seconds_per_volume"], ".2f")]
        print("| " + " | ".join(cells) + " |")
    for r in others:
        figures = ", ".join(
            f"{SCORE_NAMES[k]} {_fmt(r['scores'][k], '.3f')}" for k in SCORE_KEYS[:3]
        )
        seconds = r["infer_seconds_per_volume"]
        print(
            f"  also measured: {LABELS[r['method']]} ({MODE_NAMES[r['mode']]}): {figures}, "
            f"{seconds:.2f} s per volume"
        )
    for r in rows:
        print(f"  {r['method']}: {json.dumps(r['detail'], default=str)}")
    if fam.get("intervals"):
        for line in format_intervals(fam["intervals"], _row_labels(rows), "det3d", SCORE_NAMES):
            print(line)


def _row_labels(rows: list) -> dict:
    out = {}
    for r in rows:
        mode = MODE_NAMES.get(r["mode"])
        out[r["method"]] = LABELS[r["method"]] + (f" ({mode})" if mode else "")
    return out


def table_intervals(rows: list) -> dict:
    """
    Bootstrap intervals of the table's rows over the test volumes (``bench/peers/intervals.py``);
    {} (with a warning naming why) where an evaluation lacks per-volume sums, so that a finished
    bench still prints its table.
    """
    try:
        per_volume = {r["method"]: read_per_volume(r["eval_folder"]) for r in rows}
        reference = "det3d" if "det3d" in per_volume and len(per_volume) > 1 else ""
        return volume_bootstrap(per_volume, reference=reference)
    except (KeyError, ValueError) as e:
        print(f"WARNING: no intervals for this table: {e}")
        return {}


def parse_det3d_outputs(values, families) -> dict:
    out = {}
    for v in values or []:
        fam, sep, path = v.partition("=")
        if not sep:
            if len(families) != 1:
                raise SystemExit(
                    f"--det3d-output {v}: name the family (FAMILY=DIR) with --family all"
                )
            fam, path = families[0], v
        if fam not in FAMILIES:
            raise SystemExit(f"--det3d-output {v}: unknown family {fam!r}; known {list(FAMILIES)}")
        if not os.path.isdir(path):
            raise SystemExit(f"--det3d-output {v}: {path} is not a folder")
        out[fam] = path
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per method")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every method")
    p.add_argument("--output", default=os.path.join("output", "peers"))
    p.add_argument("--reuse", action="store_true", help="score finished runs in --output again")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--det3d-output", nargs="*", help="[FAMILY=]DIR of a finished det3d run")
    p.add_argument("--peers-venv", default="/work/scratch/peers-venv")
    p.add_argument("--train-volumes", type=int, default=0, help="first N training volumes (0: all)")
    p.add_argument("--test-volumes", type=int, default=0, help="first N test volumes (0: all)")
    args = p.parse_args(argv)
    families = list(FAMILIES) if args.family == "all" else [args.family]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        p.error(f"--methods {args.methods!r}: unknown {unknown}; choose from {list(METHODS)}")
    if args.minutes <= 0 or args.threads <= 0:
        p.error("--minutes and --threads must be positive")
    cores = len(os.sched_getaffinity(0))
    if args.threads > cores:
        print(
            f"WARNING: --threads {args.threads} on {cores} visible core(s): the methods' times "
            "include oversubscription"
        )
    args.det3d_output = parse_det3d_outputs(args.det3d_output, families)

    summary = {}
    for family in families:
        family_dir = os.path.abspath(os.path.join(args.output, family))
        os.makedirs(family_dir, exist_ok=True)
        fam = family_setup(family, args, family_dir)
        rows, others = [], []
        for method in methods:
            if method == "det3d":
                rows.append(det3d_row(fam, args, family_dir))
                continue
            folder = run_peer(method, fam, args, family_dir)
            best, *rest = peer_rows(method, folder, fam["test"])
            rows.append(best)
            others.extend(rest)
        fam["intervals"] = table_intervals(rows)
        print_table(fam, rows, others, args)
        summary[family] = {"rows": rows, "others": others, "intervals": fam["intervals"]}
    write_json_atomic(os.path.join(args.output, "peers_results.json"), summary)
    print(f"\nResults: {os.path.join(args.output, 'peers_results.json')}")
    return summary


if __name__ == "__main__":
    main()
