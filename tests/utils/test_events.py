import json
import logging

import pytest

from det3d.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardXWriter,
    current_event_storage,
    get_event_storage,
)
from det3d.utils.logger import log_every_n, log_first_n, setup_logger


def test_current_event_storage_is_none_outside_training():
    assert current_event_storage() is None
    with EventStorage(start_iter=0) as outer:
        assert current_event_storage() is outer
        with EventStorage(start_iter=0) as inner:
            assert current_event_storage() is inner
        assert current_event_storage() is outer
    assert current_event_storage() is None


def test_storage_history_latest_and_smoothing():
    with EventStorage(start_iter=0) as storage:
        assert get_event_storage() is storage
        for it, v in enumerate([1.0, 100.0, 2.0, 3.0]):
            storage.iter = it
            storage.put_scalar("loss", v)
            storage.put_scalar("lr", v / 10, smoothing_hint=False)
        assert storage.latest()["loss"] == (3.0, 3)
        smoothed = storage.latest_with_smoothing_hint(window_size=3)
        assert smoothed["loss"] == (3.0, 3)  # median of 100, 2, 3
        assert smoothed["lr"] == (0.3, 3)  # not smoothed
        assert storage.history("loss").global_avg() == pytest.approx(26.5)
        with pytest.raises(KeyError, match="nope"):
            storage.history("nope")
        with pytest.raises(AssertionError, match="smoothing_hint"):
            storage.put_scalar("lr", 1.0, smoothing_hint=True)
        with storage.name_scope("val"):
            storage.put_scalars(AP=0.5)
        assert "val/AP" in storage.latest()
    with pytest.raises(AssertionError, match="EventStorage"):
        get_event_storage()


def test_count_samples_for_sparse_metrics():
    with EventStorage() as storage:
        for it in range(0, 40, 10):
            storage.put_scalar("sparse", float(it), cur_iter=it)
        assert storage.count_samples("sparse", window_size=20) == 2


def test_json_writer_writes_each_iteration_once(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage() as storage:
        storage.put_scalar("a", 1.0)
        writer.write()
        writer.write()  # nothing new
        storage.iter = 1
        storage.put_scalar("a", 2.0)
        writer.write()
    writer.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    # losses-like scalars are smoothed: median of 1.0 and 2.0
    assert lines == [{"a": 1.0, "iteration": 0}, {"a": 1.5, "iteration": 1}]


def test_tensorboard_writer_without_tensorboard_is_a_noop(tmp_path):
    writer = TensorboardXWriter(str(tmp_path))
    with EventStorage() as storage:
        storage.put_scalar("a", 1.0)
        writer.write()
    writer.close()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert not writer.enabled


def test_common_metric_printer(caplog):
    printer = CommonMetricPrinter(max_iter=10)
    with caplog.at_level(logging.INFO, logger="det3d.utils.events"):
        with EventStorage() as storage:
            storage.iter = 4
            storage.put_scalars(loss_cls=0.5, time=0.1, data_time=0.01)
            storage.put_scalar("lr", 0.02, smoothing_hint=False)
            printer.write()
    msg = caplog.records[-1].message
    for part in ("iter: 4", "loss_cls: 0.5", "lr: 0.02", "eta: 0:00:00"):
        assert part in msg


def test_setup_logger_writes_file_and_does_not_duplicate(tmp_path, capsys):
    logger = setup_logger(str(tmp_path), name="det3d_test_logger")
    setup_logger(str(tmp_path), name="det3d_test_logger")
    logger.info("hello once")
    assert capsys.readouterr().out.count("hello once") == 1
    assert "hello once" in (tmp_path / "log.txt").read_text()
    rank1 = setup_logger(str(tmp_path), distributed_rank=1, name="det3d_test_logger_r1")
    rank1.info("from rank 1")
    assert "from rank 1" not in capsys.readouterr().out
    assert "from rank 1" in (tmp_path / "log.txt.rank1").read_text()


def test_log_every_n_and_first_n(caplog):
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            log_every_n(logging.INFO, "every-2", n=2, name="det3d.t")
            log_first_n(logging.INFO, "first-1", n=1, name="det3d.t")
    msgs = [r.message for r in caplog.records]
    assert msgs.count("every-2") == 3 and msgs.count("first-1") == 1
