"""Fault injection for the reliability tests: kill this process at a chosen point of training.

``FACEAGE_TEST_KILL_AT="POINT:EPOCH[,POINT:EPOCH...]"`` (epochs count from 1) sends SIGKILL
to the training process itself, so nothing gets a chance to clean up, as with a power cut or
the out-of-memory killer. Points:

- ``mid_epoch``: after the first training batch of the epoch;
- ``validation``: after the first validation batch of the epoch;
- ``checkpoint_write``: while ``last.ckpt`` is being written (the temporary file is complete
  but not renamed yet);
- ``epoch_end``: right after the epoch is recorded (checkpoints and history written);
- ``teacher_saved``: ``faceage teach``, right after teacher number EPOCH's answers are saved.

Unset (always, outside tests) it does nothing: one environment lookup per call.
"""
from __future__ import annotations

import os
import signal

import lightning as L

ENV = "FACEAGE_TEST_KILL_AT"
POINTS = ("mid_epoch", "validation", "checkpoint_write", "epoch_end", "teacher_saved")


def armed() -> bool:
    return bool(os.environ.get(ENV))


def kill_point(point: str, epoch: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, at = item.strip().partition(":")
        if name == point and at.strip().isdigit() and int(at) == epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class FaultInjection(L.Callback):
    """The points inside an epoch; added to the trainer only when ``FACEAGE_TEST_KILL_AT`` is set."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            kill_point("mid_epoch", trainer.current_epoch + 1)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            kill_point("validation", trainer.current_epoch + 1)
