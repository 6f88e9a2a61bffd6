"""`rayssl runs`: the table of past and present runs, from real runs' records on disk."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rayssl.cli import main
from rayssl.cluster import RunFailed, fit
from rayssl.config import load_train_config

LOCAL = {"num_workers": 0, "epochs": 2}


def test_runs_lists_finished_failed_running_and_interrupted_runs(write_config, tmp_path):
    storage = tmp_path / "runs"
    fit(load_train_config(write_config({**LOCAL, "name": "done"}, name="done")))
    try:
        fit(
            load_train_config(write_config({**LOCAL, "name": "broken"}, name="broken")),
            crash_after_epoch=1,
        )
    except RunFailed:
        pass
    # a real run that keeps training, in its own process (its pid is ours to signal)
    long = write_config({**LOCAL, "name": "long", "epochs": 10_000}, name="long")
    process = subprocess.Popen(
        [sys.executable, "-m", "rayssl.cli", "train", str(long)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if list(storage.glob("long-*/rayssl_checkpoints.json")):
                break
            time.sleep(0.5)
        result = CliRunner().invoke(main, ["runs", str(storage), "--json"])
        assert result.exit_code == 0, result.output
        rows = {r["run"].rsplit("-", 2)[0]: r for r in json.loads(result.output)}
        # a second driver on the same run would write over the live one's checkpoints
        (long_run,) = storage.glob("long-*")
        twice = subprocess.run(
            [sys.executable, "-m", "rayssl.cli", "train", str(long), "--resume"],
            capture_output=True,
            text=True,
        )
        assert twice.returncode == 2, twice.stderr[-2000:]
        (line,) = twice.stderr.strip().splitlines()
        assert f"is being trained by another driver (process {process.pid} on " in line
        record = json.loads((long_run / "run.json").read_text())  # not rewritten
        assert (record["status"], record["pid"]) == ("running", process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert rows["done"]["status"] == "finished"
    assert (rows["done"]["epochs"], rows["done"]["planned_epochs"]) == (2, 2)
    assert rows["done"]["best_metric"] == "val_accuracy" and rows["done"]["checkpoint"]
    assert rows["broken"]["status"] == "failed" and "injected" in rows["broken"]["error"]
    assert rows["long"]["status"] == "running" and rows["long"]["planned_epochs"] == 10_000
    assert rows["long"]["epochs"] >= 1  # local mode: from its newest checkpoint
    assert all(r["method"] == "supervised" for r in rows.values())

    after = CliRunner().invoke(main, ["runs", str(storage)])
    assert after.exit_code == 0, after.output
    lines = after.output.strip().splitlines()
    assert lines[0].split()[:4] == ["run", "method", "status", "epochs"]
    table = {line.split()[0].rsplit("-", 2)[0]: line for line in lines[1:]}
    assert "interrupted" in table["long"]  # its driver is gone
    assert "finished" in table["done"] and "2/2" in table["done"]
    assert "val_accuracy" in table["done"]

    # pictures: every finished run draws curves.png; rayssl plot draws several runs
    (done,) = storage.glob("done-*")
    from PIL import Image

    with Image.open(done / "curves.png") as picture:
        assert picture.size == (1100, 750)
    out = tmp_path / "both.png"
    both = CliRunner().invoke(main, ["plot", str(done), str(long_run), "--out", str(out)])
    assert both.exit_code == 0, both.output
    with Image.open(out) as picture:
        assert picture.size == (1100, 750)


def test_plot_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "has no summary.json nor checkpoint metrics" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_runs_of_a_missing_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["runs", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"rayssl: error: '{tmp_path / 'nowhere'}' holds no runs (no such folder); give a "
        "storage_path"
    ]


def test_runs_and_plot_read_a_resumed_ray_run_from_its_newest_state(
    ray_session, write_config, tmp_path
):
    """A Ray run (2 workers, one checkpoint kept) finishes 2 epochs, is resumed for 4 and
    fails after epoch 3: its older summary.json no longer counts (status failed, 3/4), and
    the history is every epoch from the newest state, not the one checkpoint Ray keeps. A
    local run that lost its state.pt shows as unreadable without breaking the table."""
    from rayssl.runs.plots import history_of

    storage = tmp_path / "runs"
    keep_one = {"name": "resumed", "checkpoint": {"num_to_keep": 1}}
    fit(load_train_config(write_config({**keep_one, "epochs": 2}, name="resumed")))
    try:
        fit(
            load_train_config(write_config({**keep_one, "epochs": 4}, name="resumed")),
            resume=True,
            crash_after_epoch=3,
        )
    except RunFailed:
        pass
    lost = fit(load_train_config(write_config({**LOCAL, "name": "lost"}, name="lost")))
    (Path(lost["path"]).parent / "summary.json").unlink()
    for state in Path(lost["path"]).parent.glob("*/state.pt"):
        state.unlink()

    result = CliRunner().invoke(main, ["runs", str(storage), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["run"].rsplit("-", 2)[0]: r for r in json.loads(result.output)}
    assert rows["resumed"]["status"] == "failed" and "injected" in rows["resumed"]["error"]
    # the newest state is epoch 3's, or epoch 2's when the crash came before Ray Train
    # registered epoch 3's checkpoint (its controller registers reports asynchronously;
    # seen under load); either way the resumed 4-epoch run, not the old 2/2 summary
    newest = rows["resumed"]["epochs"]
    assert newest in (2, 3) and rows["resumed"]["planned_epochs"] == 4
    assert rows["lost"]["status"] == "unreadable" and "state.pt" not in str(rows["lost"]["run"])
    (run_dir,) = storage.glob("resumed-*")
    _, history = history_of(str(run_dir))
    # every epoch of the newest state, not only the one checkpoint Ray keeps
    assert [int(h["epoch"]) for h in history] == list(range(1, newest + 1))


def test_a_live_process_that_reuses_a_dead_drivers_pid_is_not_the_driver(tmp_path):
    """A driver killed hard leaves its record at "running"; once its pid belongs to a process
    started after the run, the run reads "interrupted" and can be resumed."""
    import socket

    from rayssl.runs.listing import describe
    from rayssl.runs.storage import Storage

    younger = subprocess.Popen(["sleep", "60"])  # a live process, started after the run
    try:
        run = tmp_path / "old-20260101-000000"
        run.mkdir()
        record = {"status": "running", "host": socket.gethostname(), "pid": younger.pid}
        (run / "run.json").write_text(json.dumps({**record, "started": time.time() - 3600}))
        assert describe(Storage(str(tmp_path)), run.name)["status"] == "interrupted"
        (run / "run.json").write_text(json.dumps({**record, "started": time.time() + 5}))
        assert describe(Storage(str(tmp_path)), run.name)["status"] == "running"
    finally:
        younger.kill()
        younger.wait()


def test_a_record_that_is_no_mapping_and_a_folder_under_the_root_are_one_line(
    write_config, tmp_path
):
    """Audit 35.13: one record that was valid JSON but not a mapping crashed `rayssl runs`
    and `rayssl plot` (no run listed); a run folder directly under '/' given to plot,
    export or init_from ended in an ArrowInvalid traceback."""
    runner = CliRunner()
    for name in ("good", "odd"):
        assert (
            runner.invoke(main, ["train", str(write_config({**LOCAL, "name": name}))]).exit_code
            == 0
        )
    odd = next((tmp_path / "runs").glob("odd-*"))
    (odd / "run.json").write_text("null")
    (odd / "summary.json").write_text('{"history": 5, "wall_time_s": "long", "config": [1]}')
    listed = runner.invoke(main, ["runs", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert "good-" in listed.output and "odd-" in listed.output
    plotted = runner.invoke(main, ["plot", str(odd), "--out", str(tmp_path / "odd.png")])
    assert plotted.exit_code == 0 and (tmp_path / "odd.png").is_file(), plotted.output

    # '/' is a folder directly under the root that holds no run (no root rights needed)
    downstream = write_config({**LOCAL, "backbone": {"init_from": "/"}}, name="down")
    for args, expected in (
        (["plot", "/"], "'/' has no summary.json nor checkpoint metrics"),
        (["export", "/", "--out", str(tmp_path / "b.pt")], "path '/' holds neither"),
        (["train", str(downstream)], "backbone.init_from '/' holds neither"),
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


def test_every_command_that_reads_a_run_takes_the_same_paths(write_config, tmp_path):
    """init_from, eval, export and plot resolve a path one way (`runs/resolve.py`): a run
    folder, a checkpoint folder, or a run's name without its timestamp (the newest run of
    that name). Before, `rayssl eval` and `rayssl plot` refused a run's name that
    `backbone.init_from` took."""
    runner = CliRunner()
    config = write_config({**LOCAL, "name": "named", "method": "simclr", "epochs": 1})
    for seed in (0, 1):  # two runs of one name: the name means the newer
        trained = runner.invoke(main, ["train", str(config), "--set", f"seed={seed}"])
        assert trained.exit_code == 0, trained.output
    older, newer = sorted((tmp_path / "runs").glob("named-*"))
    by_name = str(tmp_path / "runs" / "named")
    checkpoint = next(newer.glob("checkpoint_*"))
    shown = {}
    for label, path in (("name", by_name), ("run", str(newer)), ("checkpoint", str(checkpoint))):
        evaluated = runner.invoke(main, ["eval", path])
        assert evaluated.exit_code == 0, (label, evaluated.output)
        shown[label] = evaluated.output.splitlines()[-1].split(":", 1)[-1]
    assert shown["name"] == shown["run"] == shown["checkpoint"]  # the same accuracies
    plotted = runner.invoke(main, ["plot", by_name, "--out", str(tmp_path / "p.png")])
    assert plotted.exit_code == 0 and (tmp_path / "p.png").is_file(), plotted.output
    exported = runner.invoke(main, ["export", by_name, "--out", str(tmp_path / "b.pt")])
    assert exported.exit_code == 0 and checkpoint.name in exported.output, exported.output
    assert not any(old.name in exported.output for old in older.glob("checkpoint_*"))
    downstream = write_config({**LOCAL, "epochs": 1, "backbone": {"init_from": by_name}}, name="d")
    assert runner.invoke(main, ["train", str(downstream)]).exit_code == 0
    missing = runner.invoke(main, ["eval", str(tmp_path / "runs" / "nothing")])
    assert missing.exit_code == 2
    assert "is not a run or checkpoint folder, nor a run name" in missing.output


def test_curves_give_each_series_a_colour_and_span_the_run_on_an_integer_epoch_axis(tmp_path):
    """A 3-epoch SimCLR run probes once, at its end: kNN and the linear probe are one point
    each, in colours of their own, on an epoch axis from 1 to 3 with integer ticks (before:
    both in the same blue, on an axis from 2.84 to 3.16)."""
    import matplotlib.colors as mcolors

    from rayssl.runs.plots import figure, plot_runs

    history = [
        {"epoch": e, "train_loss": 5.0 - e, "val_loss": 5.2 - e, "lr": 0.1 / e} for e in (1, 2, 3)
    ]
    history[-1].update(knn_acc=0.81, linear_acc=0.86)
    fig = figure([("simclr-1", history)])
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert lo <= 1 and hi >= 3, (ax.get_title(), lo, hi)
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        colours = [mcolors.to_hex(line.get_color()) for line in ax.get_lines()]
        assert len(set(colours)) == len(colours), (ax.get_title(), colours)
    accuracy = next(ax for ax in fig.axes if ax.get_title() == "accuracy")
    assert sorted(line.get_label() for line in accuracy.get_lines()) == ["knn_acc", "linear_acc"]
    out = plot_runs([("simclr-1", history)], tmp_path / "curves.png")
    assert out.stat().st_size > 10_000


def test_an_embedding_map_of_a_run_is_drawn_beside_its_curves(write_config, tmp_path):
    """`rayssl plot RUN --embeddings`: the run's frozen features on its test split in 2-D
    (t-SNE here, UMAP where installed), one colour and legend entry per label, the method,
    run, epoch and kNN accuracy in the title; written as embeddings.png in the run folder."""
    from rayssl.inference.maps import embedding_figure

    config = write_config(
        {
            **LOCAL,
            "name": "mapped",
            "method": "simclr",
            "simclr": {"proj_hidden": 16, "proj_dim": 8},
            "data": {"num_classes": 4},
        }
    )
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (tmp_path / "runs").glob("mapped-*")
    drawn = runner.invoke(main, ["plot", str(run), "--embeddings"])
    assert drawn.exit_code == 0, drawn.output
    assert (run / "embeddings.png").stat().st_size > 10_000 and (run / "curves.png").is_file()
    fig, _ = embedding_figure(str(run))
    (ax,) = fig.axes
    assert ax.get_title().startswith(f"simclr: {run.name}, epoch 2, kNN 0.")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["0", "1", "2", "3"]
    colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
    assert len(colours) == 4 and sum(len(c.get_offsets()) for c in ax.collections) > 10
    projection = "UMAP" if importlib.util.find_spec("umap") else "t-SNE"
    assert ax.get_title().endswith(f"({projection})")
    two = runner.invoke(main, ["plot", str(run), str(run), "--embeddings"])
    assert two.exit_code == 2 and "one RUN" in two.output


def test_the_map_projects_with_umap_where_installed_and_t_sne_otherwise(monkeypatch):
    """Three separated clusters stay three clusters in 2-D either way: UMAP (umap-learn's,
    called with the run's seed) where it imports, scikit-learn's t-SNE where it does not."""
    import sys

    from sklearn.manifold import TSNE

    from rayssl.inference.maps import two_d

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(3, 16))
    labels = np.repeat(np.arange(3), 40)
    features = (centres[labels] + rng.normal(0, 0.5, size=(120, 16))).astype(np.float32)

    def separated(points: np.ndarray) -> bool:  # every point nearer its own cluster's mean
        means = np.stack([points[labels == k].mean(0) for k in range(3)])
        nearest = ((points[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        return bool((nearest == labels).all())

    with monkeypatch.context() as without:
        without.setitem(sys.modules, "umap", None)  # as where umap-learn is not installed
        points, name = two_d(features, seed=3)
    expected = TSNE(n_components=2, init="pca", perplexity=30.0, random_state=3)
    assert name == "t-SNE" and np.allclose(points, expected.fit_transform(features))
    assert separated(points)
    umap = pytest.importorskip("umap")
    points, name = two_d(features, seed=3)
    assert name == "UMAP" and points.shape == (120, 2) and separated(points)
    again = umap.UMAP(n_components=2, random_state=3).fit_transform(features)
    assert np.allclose(points, again)  # seeded: the same map
