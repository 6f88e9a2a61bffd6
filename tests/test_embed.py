"""`rayssl embed`: a trained backbone's embeddings of an image folder or Parquet, written as
Parquet by Ray Data batch inference (real images, a real run, real actors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rayssl.cli import main
from rayssl.cluster import fit
from rayssl.config import load_train_config
from rayssl.data.demo import write_digit_images
from rayssl.inference.embed import MANIFEST, PARTIAL
from rayssl.runs.pretrained import read, rebuild


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """224-px JPEGs in class folders: the size GPU clusters read."""
    root = tmp_path_factory.mktemp("embed_digits")
    write_digit_images(root, train=64, test=40, seed=1, size=224, image_format="jpeg")
    return root


@pytest.fixture(scope="module")
def trained(_ray_at_exit, digits, tmp_path_factory) -> str:
    """The 224-px path end to end, small: two Ray Train workers stream the JPEG folder
    (decoded in Ray Data tasks), SimCLR's views at 224 px, the test split streamed to both
    ranks for the loss and the probes. Returns the run's checkpoint."""
    import ray
    import yaml

    if not ray.is_initialized():  # as the ray_session fixture, for the whole module
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    folder = tmp_path_factory.mktemp("embed_run")
    cfg = {
        "method": "simclr",
        "name": "emb",
        "epochs": 1,
        "num_workers": 2,
        "cpus_per_worker": 1,
        "storage_path": str(folder / "runs"),
        "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
        "eval": {"linear_probe": True},
        "data": {
            "name": "images",
            "path": str(digits / "train"),
            "test_path": str(digits / "test"),
            "in_memory": False,
            "probe_samples": 16,
            "val_fraction": 0,
            "batch_size": 16,
            "eval_batch_size": 16,
            "normalize": "dataset",
            "augment": {"preset": "simclr"},
        },
    }
    (folder / "c.yaml").write_text(yaml.safe_dump(cfg))
    summary = fit(load_train_config(folder / "c.yaml"))
    final = summary["final_metrics"]
    assert summary["global_steps"] == 64 // 16 and np.isfinite(final["test_loss"])
    assert 0 <= final["knn_acc"] <= 1 and 0 <= final["linear_acc"] <= 1
    return summary["checkpoint"]


def _expected(checkpoint: str, files: list[Path]) -> np.ndarray:
    """The backbone applied by hand: decoded at 224 px, scaled, the run's normalisation."""
    backbone = read(checkpoint)
    module = rebuild(backbone, checkpoint)
    mean, std = (torch.tensor(backbone.normalize[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    pixels = []
    for f in files:
        with Image.open(f) as image:
            image = image.convert("RGB")
            pixels.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(pixels)).float() / 255
    with torch.no_grad():
        return module((x - mean) / std).flatten(1).numpy()


def _assert_rows(out: Path, sources: list[str], checkpoint: str, files: list[Path]) -> None:
    """The embeddings at `out` are one row per source, in any order: row `sources[i]` holds
    the backbone applied by hand to `files[i]` and its class folder's label."""
    table = pq.read_table(out)
    rows = {s: i for i, s in enumerate(table.column("source").to_pylist())}
    assert sorted(rows) == sorted(sources)
    order = [rows[s] for s in sources]
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[order]
    np.testing.assert_allclose(got, _expected(checkpoint, files), rtol=1e-4, atol=1e-5)
    labels = table.column("label").to_pylist()
    assert [labels[i] for i in order] == [int(f.parent.name) for f in files]


def _invoke(*args: str):
    return CliRunner().invoke(main, ["embed", *args])


def test_embed_an_image_folder_with_two_actors(ray_session, trained, digits, tmp_path):
    out = tmp_path / "emb"
    result = _invoke(trained, str(digits / "test"), "--out", str(out), "--actors", "2")
    assert result.exit_code == 0, result.output
    # when the first rows came (Ray's start, the actors loading the backbone), within the job
    manifest = json.loads((out / MANIFEST).read_text())
    assert 0 < manifest["first_rows_s"] <= manifest["wall_s"]
    table = pq.read_table(out).sort_by("source")  # the manifest ("_" first) is passed over
    files = sorted((digits / "test").rglob("*.jpg"))
    assert table.column("source").to_pylist() == [str(f) for f in files]
    assert table.column("label").to_pylist() == [int(f.parent.name) for f in files]
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, _expected(trained, files), rtol=1e-4, atol=1e-5)
    assert (out / MANIFEST).is_file() and not (out / PARTIAL).exists()

    # the same command again: nothing rewritten, no row twice
    again = _invoke(trained, str(digits / "test"), "--out", str(out))
    assert again.exit_code == 0 and "already holds these embeddings" in again.output
    assert pq.read_table(out).num_rows == len(files)


def test_embed_reads_image_files_in_blocks_of_one_batch(ray_session, trained, digits):
    """Image files reach the actors in blocks of `--batch-size`: the first rows come after
    one batch of work, not after a block of Ray Data's sizing (at least 1 MiB of encoded
    bytes: all 40 of these JPEGs, hundreds of a real folder's: a minute on a CPU actor)."""
    from rayssl.inference.embed import EmbedJob, _embedded, input_split

    job = EmbedJob(trained, str(digits / "test"), "unused", batch_size=8)
    split = input_split(job, tuple(read(trained).input_shape))
    tables = list(_embedded(job, split))
    assert [t.num_rows for t in tables] == [8] * 5
    files = sorted((digits / "test").rglob("*.jpg"))
    assert [s for t in tables for s in t.column("source").to_pylist()] == list(map(str, files))


def test_a_crashed_attempt_is_redone_without_duplicate_rows(ray_session, trained, digits, tmp_path):
    """A crash leaves the hidden partial folder and no manifest: the rerun discards it."""
    out = tmp_path / "emb"
    (out / PARTIAL).mkdir(parents=True)
    stale = pa.table({"source": ["x"], "label": [0], "embedding": [[0.0]]})
    pq.write_table(stale, out / PARTIAL / "stale.parquet")
    result = _invoke(trained, str(digits / "test"), "--out", str(out))
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 40 and len(set(table.column("source").to_pylist())) == 40


def test_a_restart_resumes_after_the_whole_parts(
    ray_session, trained, digits, tmp_path, monkeypatch
):
    """Parts of 16 rows (3 for the 40 test images): an attempt that fails once one part is
    whole leaves that part in place; the rerun keeps its file untouched, embeds only the
    other two, and every image is one row with the embedding the backbone gives it."""
    from rayssl.inference.embed import CRASH_AFTER_PARTS_ENV

    out, files = tmp_path / "emb", sorted((digits / "test").rglob("*.jpg"))
    command = [trained, str(digits / "test"), "--out", str(out), "--part-rows", "16"]
    monkeypatch.setenv(CRASH_AFTER_PARTS_ENV, "1")
    crashed = _invoke(*command)
    assert crashed.exit_code == 1 and "injected crash after 1 parts" in crashed.output
    first = out / "part-00000.parquet"
    assert (out / "_rayssl-part-00000.json").is_file() and not (out / MANIFEST).exists()
    assert pq.read_table(first).column("source").to_pylist() == [str(f) for f in files[:16]]
    written = first.stat().st_mtime_ns

    # another part size than the first attempt's: refused, nothing touched
    other = _invoke(*command[:-1], "8")
    assert other.exit_code == 2 and "rerun with --part-rows 16" in other.output

    monkeypatch.delenv(CRASH_AFTER_PARTS_ENV)
    resumed = _invoke(*command)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 1 of 3 parts" in resumed.output
    assert first.stat().st_mtime_ns == written  # the whole part was not embedded again
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(out / p).num_rows for p in parts] == [16, 16, 8]
    _assert_rows(out, [str(f) for f in files], trained, files)
    assert (out / MANIFEST).is_file() and not (out / PARTIAL).exists()


def test_embed_parquet_image_bytes_names_file_and_row(ray_session, trained, digits, tmp_path):
    files = sorted((digits / "test").rglob("*.jpg"))[:12]
    data = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"x": [f.read_bytes() for f in files], "y": [int(f.parent.name) for f in files]}),
        data,
        row_group_size=5,  # three row groups: rows keep their file's numbering
    )
    out = tmp_path / "emb"
    assert _invoke(trained, str(data), "--out", str(out)).exit_code == 0
    _assert_rows(out, [f"{data}#{i}" for i in range(12)], trained, files)


def test_embed_webdataset_shards_names_shard_and_key(ray_session, trained, digits, tmp_path):
    """Shards (a brace pattern of them) embed as their images in a folder do; each row
    names its shard and sample key."""
    webdataset = pytest.importorskip("webdataset")
    files = sorted((digits / "test").rglob("*.jpg"))[:12]
    (tmp_path / "shards").mkdir()
    with webdataset.ShardWriter(str(tmp_path / "shards" / "s-%02d.tar"), maxcount=5) as sink:
        for i, f in enumerate(files):
            sink.write({"__key__": f"k{i:02d}", "jpg": f.read_bytes(), "cls": int(f.parent.name)})
    out = tmp_path / "emb"
    pattern = str(tmp_path / "shards" / "s-{00..02}.tar")
    result = _invoke(trained, pattern, "--out", str(out))
    assert result.exit_code == 0, result.output
    shard = lambda i: tmp_path / "shards" / f"s-{i // 5:02d}.tar"  # noqa: E731
    _assert_rows(out, [f"{shard(i)}:k{i:02d}.jpg" for i in range(12)], trained, files)


def test_bad_embed_input_is_one_line(ray_session, trained, digits, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(digits / "test", corrupt)
    victim = sorted(corrupt.rglob("*.jpg"))[17]
    victim.write_bytes(victim.read_bytes()[:300])  # a JPEG cut short
    flat = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"x": [[0.5] * 7] * 4, "y": [0, 1, 0, 1]}), flat)
    other = tmp_path / "other"
    assert _invoke(trained, str(digits / "test"), "--out", str(other)).exit_code == 0
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    cases = [
        ([str(tmp_path / "no-run"), str(digits / "test")], "embed's SOURCE"),
        ([trained, str(empty)], "holds no images"),
        ([trained, str(flat)], "SOURCE's backbone takes samples of shape [3, 224, 224]"),
        ([trained, str(corrupt)], f"{victim.parent.name}/{victim.name}' cannot be decoded"),
        ([trained, str(digits / "train"), "--out", str(other)], "embeddings of another"),
        ([trained, str(digits / "test"), "--out", str(stranger)], "holds other files"),
    ]
    for args, expected in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / f"out{len(args)}-{abs(hash(expected))}")]
        result = _invoke(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (expected, result.output)
        assert lines[-1].startswith("rayssl: error:") and expected in lines[-1], lines
        assert "Traceback" not in result.output
    assert (stranger / "notes.txt").read_text() == "mine"  # nothing lost
    assert pq.read_table(other).num_rows == 40


def _printed(output: str) -> dict[str, float]:
    words = output.strip().splitlines()[-1].split()
    return dict(zip(words[::2], map(float, words[1::2]), strict=True))


def test_eval_on_two_workers_equals_one_process_and_names_a_bad_file(
    ray_session, trained, digits, tmp_path
):
    """`rayssl eval --workers 2`: each Ray Train worker embeds its share of the streamed fit
    and test splits, the probes run across both; the accuracies are the in-process ones
    (up to a tie of one of the 40 test images), as are those the 2-worker training run
    itself reported at its end, each rank over its share of the streamed splits. A JPEG cut
    short in the middle of the test split is one line naming it, found by a worker's Ray
    Data task."""
    import json

    from rayssl.inference.evaluate import evaluate_checkpoint
    from rayssl.runs.state import STATE_FILE, load_state_file

    alone = evaluate_checkpoint(trained)
    in_training = json.loads((Path(trained).parent / "summary.json").read_text())
    for metric in ("knn_acc", "linear_acc"):
        got = in_training["final_metrics"][metric]
        assert abs(got - alone[metric]) <= 1 / 40 + 1e-4, (metric, got, alone)
    result = CliRunner().invoke(main, ["eval", trained, "--workers", "2"])
    assert result.exit_code == 0, result.output
    shared = _printed(result.output)
    assert set(shared) == {"knn_acc", "linear_acc"}
    for metric in shared:
        assert abs(shared[metric] - alone[metric]) <= 1 / 40 + 1e-4, (shared, alone)

    corrupt = tmp_path / "test"
    shutil.copytree(digits / "test", corrupt)
    victim = sorted(corrupt.rglob("*.jpg"))[21]
    victim.write_bytes(victim.read_bytes()[:300])
    state = load_state_file(Path(trained) / STATE_FILE)
    state["config"]["data"]["test_path"] = str(corrupt)  # the same run, scored on the copy
    (tmp_path / "ckpt").mkdir()
    torch.save(state, tmp_path / "ckpt" / STATE_FILE)
    bad = CliRunner().invoke(main, ["eval", str(tmp_path / "ckpt"), "--workers", "2"])
    lines = bad.output.strip().splitlines()
    assert bad.exit_code == 2, bad.output
    assert lines[-1].startswith("rayssl: error:") and "Traceback" not in bad.output, lines
    assert f"{victim.parent.name}/{victim.name}' cannot be decoded" in lines[-1], lines
    gpu = CliRunner().invoke(main, ["eval", trained, "--use-gpu"])
    assert gpu.exit_code == 2 and "--use-gpu needs --workers N" in gpu.output


def test_eval_runs_an_image_backbone_in_channels_last_as_embed_does(
    ray_session, trained, monkeypatch
):
    """`rayssl eval` feeds the convolutions channels_last batches, as `rayssl embed`'s actors
    do (RAYSSL_INFERENCE_LAYOUT=contiguous: the plain layout), with the same accuracies."""
    from rayssl.inference.evaluate import evaluate_checkpoint

    layouts = []

    def note_layout(module, args):  # of images, not the builders' dry forwards of zeros
        if isinstance(module, torch.nn.Conv2d) and bool(args[0].any()):
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(note_layout)
    try:
        default = evaluate_checkpoint(trained)
        assert layouts and all(layouts)
        layouts.clear()
        monkeypatch.setenv("RAYSSL_INFERENCE_LAYOUT", "contiguous")
        plain = evaluate_checkpoint(trained)
        assert layouts and not any(layouts)
    finally:
        hook.remove()
    for metric in ("knn_acc", "linear_acc"):
        assert abs(default[metric] - plain[metric]) <= 1 / 40 + 1e-4, (default, plain)


def test_parts_are_item_ranges_of_at_least_part_rows_rows():
    from rayssl.inference.embed_output import plan_parts

    assert plan_parts([1] * 40, 16) == [range(0, 16), range(16, 32), range(32, 40)]
    # Parquet row groups are never split: a part ends once it holds part_rows rows
    assert plan_parts([100, 5, 5, 200, 3], 50) == [range(0, 1), range(1, 4), range(4, 5)]
    assert plan_parts([7], 50) == [range(0, 1)]


def test_a_partial_output_of_another_job_is_refused_and_left_alone(tmp_path):
    """--out holding the unfinished parts of another backbone's, or of this input when it
    had other items, is one line; its files stay."""
    import json

    import pyarrow.fs as pafs

    from rayssl.config import ConfigError
    from rayssl.inference.embed_output import JOB, Output

    out = tmp_path / "emb"
    out.mkdir()
    held = {"source": {"run": "other"}, "data": "d", "items": 40, "part_rows": 16}
    (out / JOB).write_text(json.dumps(held))
    (out / "part-00000.parquet").write_bytes(b"kept")
    fs = pafs.LocalFileSystem()
    mine = {"source": {"run": "mine"}, "data": "d", "items": 40, "part_rows": 16}
    with pytest.raises(ConfigError, match="partial embeddings of another backbone or input"):
        Output.open(str(out), fs, str(out), mine)
    grown = {**held, "items": 41}
    with pytest.raises(ConfigError, match="when it had 40 items; it has 41 now"):
        Output.open(str(out), fs, str(out), grown)
    assert (out / "part-00000.parquet").read_bytes() == b"kept"
    assert Output.open(str(out), fs, str(out), held) is not None  # the same job: resumed
