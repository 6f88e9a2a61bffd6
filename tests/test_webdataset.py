"""WebDataset tar shards (`data.name: webdataset`) end to end, on shards webdataset's own
`ShardWriter` writes at test time (`rayssl demo-images --shards`): the index on the driver,
in-memory decoding, the held-out val split, the training stream through Ray Data's reader,
evaluation splits read by byte range on each rank, a 2-worker run, URIs and brace patterns,
bad input."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import IMAGE_SSL, assert_bad_data_refused, assert_streams_to_two_workers

from rayssl.cli import main
from rayssl.cluster import fit
from rayssl.config import ConfigError, DataConfig, load_train_config
from rayssl.data.datasets import load_splits
from rayssl.data.demo import write_digit_images
from rayssl.data.stored import StoredSplit

pytest.importorskip("webdataset")  # the writer (reading needs only Ray Data)

SSL = IMAGE_SSL


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """The same 240 train / 80 test demo images as a folder and as shards of 64 samples."""
    root = tmp_path_factory.mktemp("wds")
    write_digit_images(root / "folder", train=240, test=80, seed=0)
    write_digit_images(root / "shards", train=240, test=80, seed=0, shard_size=64)
    return root / "folder", root / "shards"


def _digests(x, y) -> list[tuple[int, str]]:
    x = np.asarray(x, dtype=np.float64)
    x = (x * 255 if x.max() <= 1 else x).round().astype(np.uint8)  # [0, 1] floats or bytes
    return sorted(
        (int(label), hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest())
        for a, label in zip(x, np.asarray(y), strict=True)
    )


def test_shards_decode_to_what_the_same_images_in_a_folder_do(demo):
    folder, shards = demo
    assert len(list((shards / "train").glob("shard-*.tar"))) == 4  # 240 samples by 64
    cfg = {"val_fraction": 0, "batch_size": 16, "image_size": 24}
    by_folder = load_splits(
        DataConfig(name="images", path=str(folder / "train"), test_path=str(folder / "test"), **cfg)
    )
    by_shards = load_splits(
        DataConfig(
            name="webdataset", path=str(shards / "train"), test_path=str(shards / "test"), **cfg
        )
    )
    assert by_shards.stream is None and by_shards.num_classes == 10
    assert by_shards.sample_shape == (3, 24, 24)  # resized as a folder's images are
    assert _digests(*by_shards.train) == _digests(*by_folder.train)
    assert _digests(*by_shards.test) == _digests(*by_folder.test)


def test_the_val_split_and_labels_per_class_pick_samples_of_the_shards(demo):
    _, shards = demo
    base = DataConfig(name="webdataset", path=str(shards / "train"), batch_size=8)
    held = load_splits(base.model_copy(update={"val_fraction": 0.25}))
    assert len(held.train[0]) == 180 and len(held.val[0]) == 60
    whole = load_splits(base.model_copy(update={"val_fraction": 0}))
    assert sorted(_digests(*held.train) + _digests(*held.val)) == _digests(*whole.train)
    few = load_splits(base.model_copy(update={"val_fraction": 0.25, "labels_per_class": 3}))
    assert np.bincount(few.train[1].numpy()).tolist() == [3] * 10
    assert set(_digests(*few.train)) <= set(_digests(*held.train))  # never a val sample


def test_streamed_shards_yield_every_kept_sample_once_and_eval_reads_by_rank(ray_session, demo):
    """in_memory false: the training stream (Ray Data's reader, whole shards) yields exactly
    the samples left after val is held out, each once with its label; val stays in storage
    and two ranks' shares read by byte range are the held-out samples, each once."""
    _, shards = demo
    cfg = DataConfig(
        name="webdataset", path=f"file://{shards / 'train'}", in_memory=False,
        val_fraction=0.25, probe_samples=16, batch_size=16,
    )  # fmt: skip
    splits = load_splits(cfg)
    assert splits.stream.kind == "webdataset" and splits.stream.num_rows == 180
    assert isinstance(splits.val, StoredSplit) and len(splits.val) == 60
    rows = splits.stream.dataset().take_all()
    streamed = _digests(np.stack([r["x"] for r in rows]), [r["y"] for r in rows])
    val = [b for rank in (0, 1) for b in splits.val.batches(rank, 2, 7, "cpu")]
    held_out = _digests(np.concatenate([x for x, _ in val]), np.concatenate([y for _, y in val]))
    everything = load_splits(
        DataConfig(name="webdataset", path=str(shards / "train"), val_fraction=0, batch_size=8)
    )
    assert len(streamed) == 180 and len(held_out) == 60
    assert sorted(streamed + held_out) == _digests(*everything.train)


def test_shards_of_mixed_image_formats_stream_every_sample(ray_session, demo, tmp_path):
    """One shard of PNGs, one of JPEGs (and a sample of each in a third): Ray Data's rows
    then carry both columns, the one a sample lacks empty; each sample is read by its own."""
    import webdataset
    from PIL import Image

    _, shards = demo
    folder = tmp_path / "mixed"
    folder.mkdir()
    pngs = sorted((shards.parent / "folder" / "test").rglob("*.png"))[:24]

    def jpeg(path: Path) -> bytes:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    formats = ["png"] * 10 + ["jpg"] * 10 + ["png", "jpg"] * 2
    with webdataset.ShardWriter(str(folder / "m-%02d.tar"), maxcount=10, verbose=0) as sink:
        for i, (path, suffix) in enumerate(zip(pngs, formats, strict=True)):
            data = path.read_bytes() if suffix == "png" else jpeg(path)
            sink.write({"__key__": f"s{i:03d}", suffix: data, "cls": int(path.parent.name)})
    cfg = DataConfig(
        name="webdataset", path=str(folder), in_memory=False, val_fraction=0,
        probe_samples=4, batch_size=8,
    )  # fmt: skip
    rows = load_splits(cfg).stream.dataset().take_all()
    assert sorted(int(r["y"]) for r in rows) == sorted(int(p.parent.name) for p in pngs)
    in_memory = load_splits(cfg.model_copy(update={"in_memory": True}))
    streamed = np.stack([r["x"] for r in rows])
    assert _digests(streamed, [r["y"] for r in rows]) == _digests(*in_memory.train)


# slow: the stream's rows (test_streamed_shards_yield_every_kept_sample_once_and_eval_reads_by_rank)
# and the 2-worker run of a streamed folder (test_images.py) cover it in the default suite
@pytest.mark.slow
def test_simclr_streams_shards_to_two_workers(ray_session, demo, write_config):
    _, shards = demo
    data = {
        "name": "webdataset",
        "path": str(shards / "train"),
        # WebDataset's brace notation, as its users write shard lists
        "test_path": str(shards / "test" / "shard-{000000..000001}.tar"),
    }
    assert_streams_to_two_workers(data, write_config, scored=80)


def test_demo_images_writes_shards_a_local_run_trains_on(tmp_path, write_config):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main, ["demo-images", str(out), "--train", "40", "--test", "20", "--shards", "16"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        f"shard-{i:06d}.tar" for i in range(3)
    ]
    with tarfile.open(out / "train" / "shard-000000.tar") as archive:
        names = archive.getnames()
    assert len(names) == 32 and {n.split(".", 1)[1] for n in names} == {"png", "cls"}
    data = {
        "name": "webdataset", "path": str(out / "train"), "test_path": str(out / "test"),
        "val_fraction": 0, "batch_size": 8,
    }  # fmt: skip
    summary = fit(load_train_config(write_config({**SSL, "num_workers": 0, "data": data})))
    assert summary["global_steps"] == 40 // 8
    assert 0.0 <= summary["history"][-1]["knn_acc"] <= 1.0


# ============================================================================ bad input


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _bad_cases(shards: Path, tmp: Path) -> list[tuple[dict, str]]:
    png = next(
        m
        for m in tarfile.open(shards / "train" / "shard-000000.tar").getmembers()
        if m.name.endswith(".png")
    )
    image = tarfile.open(shards / "train" / "shard-000000.tar").extractfile(png).read()
    ok = [(f"s{i:03d}.png", image) for i in range(16)]
    (tmp / "none").mkdir()
    (tmp / "none" / "notes.txt").write_text("no shards")
    garbage = tmp / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    cut = tmp / "cut.tar"
    cut.write_bytes((shards / "train" / "shard-000000.tar").read_bytes()[:3000])
    return [
        ({"path": str(tmp / "none")}, "holds no .tar shards"),
        ({"path": str(garbage)}, "garbage.tar' is not a readable tar"),
        ({"path": str(cut)}, "cut.tar' is not a readable tar"),
        ({"path": str(tmp / "nowhere.tar")}, "does not exist"),
        ({"path": str(tmp / "t-{000..")}, "is not a brace pattern"),
        (
            {"path": str(_tar(tmp / "noimage.tar", [*ok, ("k.txt", b"hi")]))},
            "sample 'k' in shard",
        ),
        (
            {"path": str(_tar(tmp / "two.tar", [*ok, ("k.png", image), ("k.jpg", image)]))},
            "has 2 images",
        ),
        (
            {"path": str(_tar(tmp / "label.tar", [*ok, ("k.png", image), ("k.cls", b"cat")]))},
            "has label b'cat'",
        ),
        (
            {"path": str(_tar(tmp / "some.tar", [*ok, ("k.png", image), ("k.cls", b"3")]))},
            "has no .cls label and others have one",
        ),
        (
            {"path": str(_tar(tmp / "broken.tar", [*ok, ("k.png", b"\x89PNG not an image")]))},
            "broken.tar:k.png' cannot be decoded",
        ),
        ({"path": str(_tar(tmp / "unlabeled.tar", ok)), "_supervised": True}, "without labels"),
    ]


def test_bad_shards_are_one_line_and_write_nothing(demo, tmp_path, write_config):
    data = {"name": "webdataset", "batch_size": 8, "val_fraction": 0}
    cases = _bad_cases(demo[1], tmp_path)
    assert_bad_data_refused(cases, data, write_config, tmp_path / "runs")


def test_a_missing_shard_of_a_brace_pattern_is_named(demo):
    _, shards = demo
    pattern = str(shards / "test" / "shard-{000000..000005}.tar")
    with pytest.raises(ConfigError, match="shard-000002.tar' does not exist"):
        load_splits(DataConfig(name="webdataset", path=pattern, batch_size=8))


def test_a_shard_indexed_once_is_read_from_the_cache_until_it_changes(demo, tmp_path, monkeypatch):
    """The driver keeps each shard's index (under RAYSSL_CACHE): listing the shards again
    reads no tar (every shard's bytes replaced by text of the same size, its time kept,
    still lists as before), and a shard whose modification time moves is indexed afresh
    (and found not to be a tar any more)."""
    import os
    import shutil

    from rayssl.data.shards import list_shards

    monkeypatch.setenv("RAYSSL_CACHE", str(tmp_path / "cache"))
    shards = tmp_path / "shards"
    shutil.copytree(demo[1] / "test", shards)
    first = list_shards(str(shards), "test_path")
    assert len(first.refs) == 80 and first.labels is not None
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.json"))) == len(first.shards)
    for shard in shards.glob("*.tar"):
        stat = shard.stat()
        shard.write_bytes((b"not a tar " * stat.st_size)[: stat.st_size])
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = list_shards(str(shards), "test_path")
    assert (again.refs, again.paths, again.keys, again.labels) == (
        first.refs, first.paths, first.keys, first.labels
    )  # fmt: skip
    victim = sorted(shards.glob("*.tar"))[0]
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ConfigError, match=f"shard '{victim}' is not a readable tar"):
        list_shards(str(shards), "test_path")


def _members(shard: Path) -> dict[str, tuple[bytes, int]]:
    """key -> (image bytes, label) of a shard, read with tarfile, the reference."""
    found: dict[str, dict] = {}
    with tarfile.open(shard) as archive:
        for member in archive.getmembers():
            key, suffix = member.name.split(".", 1)
            data = archive.extractfile(member).read()
            entry = found.setdefault(key, {})
            entry["label" if suffix == "cls" else "image"] = data
    return {k: (v["image"], int(v["label"])) for k, v in found.items()}


def test_shards_are_indexed_in_ray_tasks_where_ray_is_up(ray_session, demo, tmp_path, monkeypatch):
    """With this process connected to Ray, the shards are indexed in Ray tasks (the driver's
    own indexing fails here), and the index is the shards' own: every sample's bytes and
    label as tarfile reads them, in the shards' order, and kept for the next command."""
    import rayssl.data.shards as shards_module

    monkeypatch.setenv("RAYSSL_CACHE", str(tmp_path / "cache"))

    def indexed_on_the_driver(*args):
        raise AssertionError("indexed on the driver, not in a Ray task")

    monkeypatch.setattr(shards_module, "_index", indexed_on_the_driver)
    listed = shards_module.list_shards(str(demo[1] / "train"), "path")
    expected = [
        (shard, key, image, label)
        for shard in sorted((demo[1] / "train").glob("*.tar"))
        for key, (image, label) in _members(shard).items()
    ]
    assert len(listed.refs) == len(expected) == 240
    for i, (shard, key, image, label) in enumerate(expected):
        assert listed.refs[i][0] == str(shard) and listed.keys[i] == key
        assert (listed.read(i), listed.labels[i]) == (image, label)
    cached = list((tmp_path / "cache" / "shard-index").glob("*.json"))
    assert len(cached) == len(listed.shards) == 4


def test_a_bad_shard_indexed_in_a_ray_task_is_one_line(ray_session, demo, tmp_path, monkeypatch):
    import shutil

    from rayssl.data.shards import list_shards

    monkeypatch.setenv("RAYSSL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "shards"
    shutil.copytree(demo[1] / "test", folder)
    victim = sorted(folder.glob("*.tar"))[1]
    victim.write_bytes(b"not a tar " * 100)
    with pytest.raises(ConfigError) as raised:
        list_shards(str(folder), "test_path")
    line = str(raised.value)
    assert f"data.test_path: shard '{victim}' is not a readable tar" in line
    assert "\n" not in line and "Traceback" not in line


def test_a_command_given_ray_address_joins_that_cluster_to_index(ray_session, demo, tmp_path):
    """A driver run by `ray job submit` has RAY_ADDRESS and is not connected yet: listing
    the shards joins that cluster (as the command would next) and indexes in its tasks."""
    import json
    import os
    import subprocess
    import sys

    import ray

    address = ray.get_runtime_context().gcs_address
    probe = Path(__file__).parent / "helpers" / "index_probe.py"
    env = {**os.environ, "RAY_ADDRESS": address, "RAYSSL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, str(probe), str(demo[1] / "test")],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["samples"] == 80 and found["joined"] == address
    expected = [
        label for shard in sorted((demo[1] / "test").glob("*.tar"))
        for _, label in _members(shard).values()
    ]  # fmt: skip
    assert found["labels"] == expected


@pytest.mark.slow
def test_local_shards_are_indexed_in_threads_where_the_head_has_no_cpu(demo, tmp_path):
    """A driver on a cluster's head without CPUs (a common layout): Ray tasks for local
    paths would be pinned to that node and never start, so the driver indexes itself."""
    import json
    import os
    import subprocess
    import sys

    helper = Path(__file__).parent / "helpers" / "index_on_cpuless_head.py"
    env = {**os.environ, "RAYSSL_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, str(helper), str(demo[1] / "test")],
        capture_output=True, text=True, env=env, timeout=240,
        cwd=helper.parent,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"samples": 80}


def test_a_first_listing_of_many_shards_says_so_once(tmp_path, monkeypatch, capsys):
    """Indexing many shards may take minutes the first time: one note says what the
    command waits on and where the index is kept; a later listing reads it quietly."""
    from rayssl.data.shards import list_shards

    monkeypatch.setenv("RAYSSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    write_digit_images(tmp_path / "many", train=8, test=80, seed=0, shard_size=8)
    first = list_shards(str(tmp_path / "many" / "test"), "test_path")
    said = capsys.readouterr().out
    assert len(first.shards) == 10 and len(first.refs) == 80
    assert said.count("[rayssl] note: data.test_path: indexing 10 shards") == 1
    assert str(tmp_path / "cache" / "shard-index") in said
    list_shards(str(tmp_path / "many" / "test"), "test_path")
    assert "indexing" not in capsys.readouterr().out
