"""TensorBoard scalar events of a run (`tensorboard --logdir RUN_DIR/tb`), written with tensorboardX."""

from __future__ import annotations

import struct
from pathlib import Path

from dmdl_dist.report.history import scalars

EVENTS_GLOB = "events.out.tfevents.*"


def write_tensorboard(history: list[dict], log_dir: str | Path) -> Path:
    """Rewrites `log_dir` from the epoch records: old event files go first, so re-running never duplicates.

    Every numeric field becomes a scalar at step = epoch: losses/*, clusters/{visible,infrared},
    outliers/*, k1/*, confidence/*, num_shared, anchor, association_rate, images_per_s, workers, stage, time/*, val/*.
    """
    from tensorboardX import SummaryWriter

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob(EVENTS_GLOB):
        old.unlink()
    writer = SummaryWriter(logdir=str(log_dir))
    try:
        for record in history:
            for tag, value in scalars(record).items():
                writer.add_scalar(tag, value, global_step=int(record["epoch"]))
    finally:
        writer.close()
    return log_dir


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file under `log_dir`: tag -> [(step, value)], without TensorBoard installed.

    An event file is a sequence of TFRecords: uint64 length, uint32 crc, payload, uint32 crc.
    """
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob(EVENTS_GLOB)):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos: pos + 8])
            payload = data[pos + 12: pos + 12 + length]
            if len(payload) < length:
                raise ValueError(f"{path} ends inside a record; the file is truncated")
            pos += 12 + length + 4
            event = Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out
