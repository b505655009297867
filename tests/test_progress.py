"""Progress without a terminal: plain lines when a task changes and at most every N seconds otherwise."""

from __future__ import annotations

import io

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
    from breastfusion.cli import app
    from breastfusion.data.synthetic.cohort import generate_cohort

    generate_cohort(tmp_path / "c", n_subjects=20, seed=0, image_px=48)
    config = tmp_path / "c.yaml"
    config.write_text("variants: {clinical: [clinical]}\ntraining: {epochs: 2}\ncv: {n_splits: 2}\n")
    result = CliRunner().invoke(app, ["run", str(config), "--manifest", str(tmp_path / "c"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "clinical · fold 1/2" in result.output and "clinical · fold 2/2" in result.output
    assert "] training" in result.output
