"""Rich progress for candidate training: runs overall, and the current run's epoch, step, loss,
on the display `common.cli.progress_bar(console, detail=True)` gives."""

from __future__ import annotations

import math

from rich.progress import Progress, TaskID
from transformers import TrainerCallback

from common.space import TrainingRun


def describe_run(run: TrainingRun) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted(run.params.items()))


class RichTrainingProgress(TrainerCallback):
    """A Trainer callback that also follows `train_candidates` from run to run (`start_run`)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.runs: TaskID | None = None
        self.steps: TaskID | None = None
        self.total_runs = 0
        self.loss = math.nan

    def start_run(self, run: TrainingRun, position: int, total: int) -> None:
        if self.runs is None:
            self.runs = self.progress.add_task("runs", total=total, detail="")
        self.total_runs = total
        self.progress.update(self.runs, completed=position - 1)
        if self.steps is not None:
            self.progress.remove_task(self.steps)
        self.loss = math.nan
        label = f"run {position}/{total} {run.id}"
        self.steps = self.progress.add_task(label, total=None, detail=describe_run(run))

    def finish(self) -> None:
        if self.runs is not None:
            self.progress.update(self.runs, completed=self.total_runs)

    def _show(self, state) -> None:
        detail = f"epoch {state.epoch or 0:.2f} loss {self.loss:.4f}"
        self.progress.update(
            self.steps, total=state.max_steps, completed=state.global_step, detail=detail
        )

    def on_train_begin(self, args, state, control, **kwargs):
        self._show(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._show(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self._show(state)


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step (benchmarks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        import time

        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        import time

        self.times.append(time.perf_counter() - self._started)
