"""Progress without a terminal: plain lines when a task changes and at most every N seconds otherwise."""

from __future__ import annotations

import io
import itertools
import re

import pytest
from typer.testing import CliRunner

from breastfusion.progress import PlainProgress


def test_plain_progress_writes_on_changes_and_periodically():
    now = [0.0]
    out = io.StringIO()
    with PlainProgress(out, every=10, clock=lambda: now[0]) as progress:
        task = progress.add_task("training", total=4)
        progress.update(task, description="ultrasound · fold 1/2")
        progress.advance(task)          # t=0: too soon for a line
        now[0] = 11.0
        progress.advance(task)          # t=11: periodic line
        progress.update(task, description="ultrasound · fold 2/2")
        progress.advance(task, 2)       # finished: a line
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("training: 0/4 (0%)")
    assert lines[1].endswith("ultrasound · fold 1/2: 0/4 (0%)")
    assert lines[2] == "[   0m11s] ultrasound · fold 1/2: 2/4 (50%)"
    assert lines[3].endswith("ultrasound · fold 2/2: 2/4 (50%)")
    assert lines[4].endswith("ultrasound · fold 2/2: 4/4 (100%)")
    assert len(lines) == 6  # and once more on exit


def test_a_run_with_output_to_a_pipe_prints_progress_lines(tmp_path):
    from breastfusion.cli.main import app
    from breastfusion.data.synthetic.cohort import generate_cohort

    generate_cohort(tmp_path / "c", n_subjects=20, seed=0, image_px=48)
    config = tmp_path / "c.yaml"
    config.write_text("variants: {clinical: [clinical]}\ntraining: {epochs: 2}\ncv: {n_splits: 2}\n")
    result = CliRunner().invoke(app, ["run", str(config), "--manifest", str(tmp_path / "c"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "clinical · fold 1/2" in result.output and "clinical · fold 2/2" in result.output
    assert "] training" in result.output
    # the last line of training: its network's last epoch and mean training loss
    assert re.search(r"clinical · fold 2/2: 4/4 \(100%\) · epoch 2/2 · loss \d+\.\d+", result.output), result.output


_LINE = re.compile(r"^\[\s*\d+m\d\ds\] (?P<variant>\w+) · fold (?P<fold>\d+)/2: \d+/\d+ \(\d+%\)"
                   r" · epoch (?P<epoch>\d+)/2 · loss (?P<loss>\d+\.\d+)$")


def test_plain_progress_shows_fields_and_counts_update_advances():
    now = [0.0]
    out = io.StringIO()
    progress = PlainProgress(out, every=10, clock=lambda: now[0])
    task = progress.add_task("ultrasound · fold 1/2", total=3)
    progress.update(task, advance=1, epoch="1/3", loss=0.693147)   # too soon: no line
    now[0] = 12.0
    progress.update(task, advance=1, epoch="2/3", loss=0.5)        # periodic line, with the fields
    progress.update(task, advance=1, epoch="3/3", loss=None)       # finished: a line; None hides the loss
    assert out.getvalue().splitlines()[1:] == ["[   0m12s] ultrasound · fold 1/2: 2/3 (67%) · epoch 2/3 · loss 0.5",
                                               "[   0m12s] ultrasound · fold 1/2: 3/3 (100%) · epoch 3/3"]


def test_cross_validation_reports_each_epochs_mean_training_loss(tmp_path):
    """Plain lines from a real (tiny) cross-validation: variant, fold, epoch, a loss number and elapsed time."""
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.experiment.crossval import cross_validate

    generate_cohort(tmp_path / "c", n_subjects=20, seed=0, image_px=48)
    (tmp_path / "c.yaml").write_text("variants: {clinical: [clinical]}\ntraining: {epochs: 2}\ncv: {n_splits: 2}\n")
    out = io.StringIO()
    with PlainProgress(out, every=0) as progress:
        cross_validate(load_cohort(tmp_path / "c"), load_config(tmp_path / "c.yaml"), progress=progress)
    found = [m.groupdict() for m in map(_LINE.match, out.getvalue().splitlines()) if m]
    assert {(f["variant"], f["fold"], f["epoch"]) for f in found} >= {("clinical", k, e) for k in "12" for e in "12"}
    losses = [float(f["loss"]) for f in found]
    assert all(0 < loss < 10 for loss in losses)  # BCE of a barely trained net: near log 2, never 0 or nan
    assert len(set(losses)) > 1  # one number per epoch, not a constant


class _Recorder:
    """The part of rich's Progress that cross-validation uses, keeping every ``loss`` field it is given."""

    def __init__(self) -> None:
        self.losses: list[float | None] = []

    def add_task(self, *_: object, **__: object) -> int:
        return 0

    def advance(self, *_: object, **__: object) -> None:
        pass

    def update(self, task_id: int, *, advance: float | None = None, **fields: object) -> None:
        if advance:
            self.losses.append(fields["loss"])  # type: ignore[arg-type]


def test_the_reported_loss_is_the_epochs_sample_weighted_mean_training_loss(tmp_path, monkeypatch):
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.experiment.crossval import cross_validate
    from breastfusion.training.module import LesionClassifier

    steps: list[tuple[int, int, float, int]] = []  # (module, epoch, batch loss, batch size), in training order
    original = LesionClassifier.training_step

    def recording_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        steps.append((id(self), self.current_epoch, float(loss.detach()), len(batch["label"])))
        return loss

    monkeypatch.setattr(LesionClassifier, "training_step", recording_step)
    generate_cohort(tmp_path / "c", n_subjects=24, seed=1, image_px=32)
    (tmp_path / "c.yaml").write_text("variants: {clinical: [clinical]}\n"
                                     "training: {epochs: 2, batch_size: 5}\ncv: {n_splits: 2}\n")
    cohort, config, recorder = load_cohort(tmp_path / "c"), load_config(tmp_path / "c.yaml"), _Recorder()
    cross_validate(cohort, config, progress=recorder, checkpoint_dir=tmp_path / "run")
    epochs = [[(loss, size) for *_, loss, size in group]  # consecutive steps of one network's one epoch
              for _, group in itertools.groupby(steps, key=lambda step: step[:2])]
    assert all(len(batches) > 1 for batches in epochs)  # a mean over batches, not one batch's loss
    means = [sum(loss * size for loss, size in b) / sum(size for _, size in b) for b in epochs]
    assert len(means) == 4 and recorder.losses == pytest.approx(means, rel=1e-5)
    # finished networks loaded from the checkpoint folder still count their epochs, with no loss to show
    again = _Recorder()
    cross_validate(cohort, config, progress=again, checkpoint_dir=tmp_path / "run")
    assert again.losses == [None] * 4


def test_a_zero_argument_epoch_hook_is_still_called():
    from types import SimpleNamespace

    from breastfusion.training.fit import EpochEnd, _EpochCallback

    calls: list[object] = []
    trainer = SimpleNamespace(callback_metrics={"train_loss": 0.25}, current_epoch=0, max_epochs=3)
    _EpochCallback(lambda: calls.append("old")).on_train_epoch_end(trainer, None)
    _EpochCallback(calls.append).on_train_epoch_end(trainer, None)
    assert calls == ["old", EpochEnd(1, 3, 0.25)]
