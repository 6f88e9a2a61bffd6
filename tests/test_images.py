"""Image folders end to end, on real PNG files made at test time (the offline digit renderer):
listing and labels, decoding in memory and in Ray Data tasks, Parquet image bytes, bad
input, streamed and local-mode SSL runs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from conftest import IMAGE_SSL, assert_bad_data_refused, assert_streams_to_two_workers
from PIL import Image

from rayssl.cli import main
from rayssl.cluster import RunFailed, fit
from rayssl.config import ConfigError, DataConfig, load_train_config
from rayssl.data.datasets import load_splits
from rayssl.data.demo import write_digit_images
from rayssl.data.images import list_images
from rayssl.data.stored import StoredSplit

SSL = IMAGE_SSL


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """`root/train/<digit>/*.png` (240) and `root/test/<digit>/*.png` (80), 32x32 RGB."""
    root = tmp_path_factory.mktemp("digits")
    write_digit_images(root, train=240, test=80, seed=0)
    return root


def _pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image.convert(mode), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def _flat_copy(src: Path, dst: Path, count: int) -> Path:
    dst.mkdir(parents=True)
    for i, path in enumerate(_files(src)[:count]):
        shutil.copy(path, dst / f"{i:05d}.png")
    return dst


def _digest(x: np.ndarray | torch.Tensor) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(x, dtype=np.uint8)).tobytes()).hexdigest()


# ============================================================================ reading


def test_image_folder_labels_index_the_sorted_class_folders(digits):
    files = list_images(str(digits / "train"), "path")
    assert files.classes == [str(d) for d in range(10)]
    assert len(files.paths) == 240
    for path, label in zip(files.paths, files.labels, strict=True):
        assert Path(path).parent.name == str(label)


def test_a_symlink_loop_and_aliases_list_each_file_once(digits, tmp_path, capsys):
    """Audit 35.14: a link back up an image folder was followed: 200 images became 24,600,
    mostly of one class, and the run went on."""
    root = tmp_path / "looped"
    shutil.copytree(digits / "train", root)
    (root / "3" / "again").symlink_to(root, target_is_directory=True)  # a loop
    (root / "4" / "alias-of-5").symlink_to(root / "5", target_is_directory=True)
    first = sorted((root / "6").glob("*.png"))[0]
    (root / "6" / "same.png").symlink_to(first)  # one file reached twice
    files = list_images(str(root), "path")
    assert len(files.paths) == 240
    assert len({Path(p).resolve() for p in files.paths}) == 240
    assert files.classes == [str(d) for d in range(10)]
    for path, label in zip(files.paths, files.labels, strict=True):
        assert Path(path).parent.name == str(label)
    assert "passed over 2 linked folder(s)" in capsys.readouterr().out


def test_in_memory_images_hold_the_decoded_pixels_and_labels(digits):
    cfg = DataConfig(
        name="images",
        path=str(digits / "train"),
        test_path=str(digits / "test"),
        val_fraction=0.0,
        batch_size=32,
    )
    splits = load_splits(cfg)
    assert splits.stream is None  # 240 small images: auto keeps them in memory
    assert splits.num_classes == 10 and splits.labeled
    x, y = splits.train
    assert x.shape == (240, 3, 32, 32) and x.dtype == torch.float32
    expected = {(int(p.parent.name), _digest(_pixels(p))) for p in _files(digits / "train")}
    got = {(int(label), _digest((xi * 255).round())) for xi, label in zip(x, y, strict=True)}
    assert got == expected
    assert splits.test[0].shape == (80, 3, 32, 32)


def test_labels_per_class_keeps_a_seeded_balanced_subset_after_val(digits):
    def splits(seed: int, per_class: int | None = 3):
        cfg = DataConfig(
            name="images",
            path=str(digits / "train"),
            val_fraction=0.25,
            batch_size=8,
            labels_per_class=per_class,
        )
        return load_splits(cfg, seed)

    full, few = splits(0, None), splits(0)
    x, y = few.train
    assert x.shape == (30, 3, 32, 32) and torch.bincount(y).tolist() == [3] * 10
    assert torch.equal(few.val[0], full.val[0])  # val is held out first, as without it
    full_rows = {_digest((xi * 255).round()) for xi in full.train[0]}
    assert {_digest((xi * 255).round()) for xi in x} <= full_rows  # from the training split
    assert torch.equal(splits(0).train[0], x)  # seeded
    assert not torch.equal(splits(1).train[0], x)


def test_image_size_and_grayscale_resize_and_convert(digits):
    cfg = DataConfig(
        name="images",
        path=str(digits / "train"),
        image_size=16,
        color="grayscale",
        val_fraction=0.25,
        batch_size=32,
    )
    splits = load_splits(cfg)
    assert splits.train[0].shape == (180, 1, 16, 16)
    assert splits.val[0].shape == (60, 1, 16, 16)  # val_fraction of the folder, held out


def test_a_flat_folder_has_no_labels_and_probes_on_the_labeled_split(digits, tmp_path):
    flat = _flat_copy(digits / "train", tmp_path / "flat", 64)
    alone = load_splits(DataConfig(name="images", path=str(flat), val_fraction=0, batch_size=16))
    assert not alone.labeled and alone.probe_sets() is None
    with_test = load_splits(
        DataConfig(
            name="images",
            path=str(flat),
            test_path=str(digits / "test"),
            val_fraction=0,
            batch_size=16,
        )
    )
    assert with_test.num_classes == 10
    fit_set, score_set = with_test.probe_sets()
    assert len(fit_set[0]) + len(score_set[0]) == 80  # halves of the labeled test split
    assert (fit_set[1] >= 0).all() and (score_set[1] >= 0).all()


def test_in_memory_false_streams_the_folder(digits):
    cfg = DataConfig(
        name="images",
        path=str(digits / "train"),
        in_memory=False,
        probe_samples=50,
        val_fraction=0,
        batch_size=32,
    )
    splits = load_splits(cfg.model_copy(update={"test_path": str(digits / "test")}))
    assert splits.stream is not None and splits.stream.kind == "image_files"
    assert splits.stream.num_rows == 240 and splits.stream.shape == (3, 32, 32)
    assert splits.train[0].shape == (50, 3, 32, 32)  # statistics / preflight sample only
    # nothing of test is decoded on the driver: each rank reads its share in storage
    assert isinstance(splits.test, StoredSplit) and len(splits.test) == 80
    fit_set, score_set = splits.probe_sets(seed=0, limit=100)
    assert isinstance(fit_set, StoredSplit) and len(fit_set) == 100  # eval.probe_train_limit
    assert len(set(fit_set.items)) == 100 and set(fit_set.items) <= set(splits.stream.files.paths)
    assert score_set is splits.test


def test_an_eval_split_beyond_eval_limit_mb_stays_in_storage(digits):
    """An in-memory training set with a val split over data.eval_limit_mb: val is not
    decoded on the driver (it was refused before), every rank reads its share instead."""
    cfg = DataConfig(name="images", path=str(digits / "train"), val_fraction=0.5, batch_size=8)
    small = load_splits(cfg)
    assert isinstance(small.val, tuple) and small.val[0].shape == (120, 3, 32, 32)
    # 120 images of 32x32x3 as float32: 1.4 MiB, over a 1 MiB limit
    large = load_splits(cfg.model_copy(update={"eval_limit_mb": 1}))
    assert isinstance(large.val, StoredSplit) and len(large.val) == 120
    assert large.stream is None and large.train[0].shape == small.train[0].shape
    # Ray Data reads it inside the workers: a local Ray keeps a CPU free for its tasks
    assert large.reads_storage and not small.reads_storage
    shares = [large.val.subset(range(r, 120, 2)).items for r in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(large.val.items)


# ============================================================================ bad input


def _bad_cases(digits: Path, tmp: Path) -> list[tuple[dict, str]]:
    corrupt = tmp / "corrupt"
    shutil.copytree(digits / "train", corrupt)
    (corrupt / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    truncated = tmp / "truncated"
    shutil.copytree(digits / "train", truncated)
    whole = (truncated / "7").iterdir().__next__()
    whole.write_bytes(whole.read_bytes()[:200])
    mixed = tmp / "mixed"
    shutil.copytree(digits / "train", mixed)
    Image.new("RGB", (40, 24)).save(mixed / "2" / "wide.png")
    missing = tmp / "missing_class"
    shutil.copytree(digits / "test", missing)
    shutil.rmtree(missing / "9")
    layout = tmp / "layout"
    shutil.copytree(digits / "train", layout)
    shutil.copy(next((layout / "1").iterdir()), layout / "loose.png")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no images here")
    flat = _flat_copy(digits / "train", tmp / "flat", 64)
    train = str(digits / "train")
    return [
        ({"path": str(corrupt)}, "broken.png' cannot be decoded"),
        ({"path": str(truncated)}, f"{whole.name}' cannot be decoded"),
        ({"path": str(mixed)}, "wide.png' is 40x24, others are 32x32: set data.image_size"),
        ({"path": train, "test_path": str(missing)}, "lacks the class folder(s) 9"),
        ({"path": str(layout)}, "use one layout"),
        ({"path": str(tmp / "empty")}, "holds no images"),
        ({"path": str(tmp / "nowhere")}, "data.path"),
        ({"path": str(flat), "_supervised": True}, "holds images without labels"),
        ({"path": str(flat), "labels_per_class": 2}, "data.labels_per_class needs labelled"),
        ({"path": train, "labels_per_class": 100}, "data.labels_per_class (100): class '"),
    ]


def test_bad_image_input_is_one_line_and_writes_nothing(digits, tmp_path, write_config):
    data = {"name": "images", "batch_size": 16, "val_fraction": 0}
    assert_bad_data_refused(_bad_cases(digits, tmp_path), data, write_config, tmp_path / "runs")


def test_a_truncated_file_is_refused_by_load_splits(digits, tmp_path):
    """The decode forces a full read: a PNG cut short fails here, not in a worker later."""
    folder = tmp_path / "t"
    shutil.copytree(digits / "test", folder)
    victim = sorted((folder / "0").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-40])
    with pytest.raises(ConfigError, match=victim.name):
        load_splits(DataConfig(name="images", path=str(folder), val_fraction=0, batch_size=8))


def test_a_malformed_tiff_and_a_vanished_file_are_one_line(digits, tmp_path):
    """PIL raises TypeError (also struct.error, EOFError) on some malformed files, and a
    file can vanish between listing and reading: each is an ImageDecodeError naming it."""
    import io

    from PIL import Image

    from rayssl.data.images import ImageDecodeError, ImageFormat, decode, decode_files, list_images

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    data[72] = 11  # a tag's type byte: PIL then computes a float count (TypeError)
    with pytest.raises(ImageDecodeError, match="image 'odd.tif' cannot be decoded"):
        decode(bytes(data[:294]), "odd.tif", ImageFormat("RGB", None))

    folder = tmp_path / "v"
    shutil.copytree(digits / "test", folder)
    files = list_images(str(folder), "path")
    Path(files.paths[3]).unlink()
    with pytest.raises(ImageDecodeError, match="cannot be read"):
        decode_files(files, ImageFormat("RGB", None))


# ============================================================================ Ray Data


def test_streamed_folder_yields_every_image_once_with_its_label(ray_session, digits):
    cfg = DataConfig(
        name="images",
        path=str(digits / "train"),
        in_memory=False,
        probe_samples=16,
        val_fraction=0,
        batch_size=32,
    )
    rows = load_splits(cfg).stream.dataset().take_all()
    got = sorted((int(r["y"]), _digest(r["x"])) for r in rows)
    expected = sorted((int(p.parent.name), _digest(_pixels(p))) for p in _files(digits / "train"))
    assert got == expected


def test_parquet_image_bytes_decode_in_ray_data(ray_session, digits, tmp_path):
    paths = _files(digits / "train")[:96]
    table = pa.table(
        {
            "image": pa.array([p.read_bytes() for p in paths], type=pa.binary()),
            "label": pa.array([int(p.parent.name) for p in paths], type=pa.int64()),
        }
    )
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(table.slice(0, 48), folder / "part-0.parquet")
    pq.write_table(table.slice(48), folder / "part-1.parquet")
    cfg = DataConfig(
        name="parquet",
        path=str(folder),
        x_column="image",
        y_column="label",
        image_size=16,
        probe_samples=20,
        batch_size=16,
    )
    splits = load_splits(cfg)
    assert splits.stream.kind == "parquet_images" and splits.sample_shape == (3, 16, 16)
    rows = splits.stream.dataset().take_all()
    assert len(rows) == 96

    def resized(p: Path) -> np.ndarray:
        with Image.open(p) as image:
            small = image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
        return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)

    got = sorted((int(r["label"]), _digest(r["image"])) for r in rows)
    assert got == sorted((int(p.parent.name), _digest(resized(p))) for p in paths)


# the same path at 224 px runs in the default suite: test_embed's `trained` fixture streams a
# JPEG folder to 2 workers, and test_eval_on_two_workers_equals_one_process checks that run's
# probes, each rank over its share, against one process's: slow here
@pytest.mark.slow
def test_simclr_streams_an_image_folder_to_two_workers(ray_session, digits, write_config):
    data = {"name": "images", "path": str(digits / "train"), "test_path": str(digits / "test")}
    assert_streams_to_two_workers(data, write_config, scored=80)


@pytest.mark.slow  # the decode error itself is in the default suite (bad-input table)
def test_a_corrupt_file_found_mid_stream_names_it(ray_session, digits, tmp_path, write_config):
    folder = tmp_path / "train"
    shutil.copytree(digits / "train", folder)
    probe_samples = 16
    # a file that the driver's probe sample (the seed's first `probe_samples` of the shuffled
    # listing) does not decode, so only a Ray Data task meets it
    paths = list_images(str(folder), "path").paths
    order = np.random.default_rng(0).permutation(len(paths))
    victim = Path(paths[int(order[-1])])
    victim.write_bytes(b"garbage")
    data = {
        "name": "images",
        "path": str(folder),
        "in_memory": False,
        "val_fraction": 0,
        "batch_size": 32,
        "probe_samples": probe_samples,
    }
    cfg = load_train_config(write_config({**SSL, "seed": 0, "eval": {"every": 0}, "data": data}))
    named = f"{victim.parent.name}/{victim.name}' cannot be decoded"
    with pytest.raises(RunFailed, match=named) as e:
        fit(cfg)
    assert e.value.bad_input  # exit code 2: the data's fault, not the run's


# slow (35 s): the map reads a split in storage as the probes do (`StoredSplit.batches`
# through Ray Data, then `Inputs.clean_features`), which test_embed's default 2-worker run
# checks against one process; the map itself is drawn in test_runs' default run
@pytest.mark.slow
def test_an_embedding_map_reads_a_test_split_left_in_storage(digits, tmp_path, write_config):
    """A test split over data.eval_limit_mb stays in storage (here beside a local-mode run):
    `rayssl plot --embeddings` reads its sample through Ray Data, as the probes do (it
    refused such a run before)."""
    from rayssl.inference.maps import embedding_figure

    data = {
        "name": "images",
        "path": str(digits / "train"),
        "test_path": str(digits / "test"),
        "image_size": 48,
        "eval_limit_mb": 1,
        "val_fraction": 0,
        "batch_size": 32,
    }  # fmt: skip  (80 test images of 48 x 48 x 3 as float32: 2.1 MiB, over 1 MiB)
    config = write_config({**SSL, "num_workers": 0, "name": "stored", "data": data})
    assert CliRunner().invoke(main, ["train", str(config)]).exit_code == 0
    (run,) = (tmp_path / "runs").glob("stored-*")
    fig, _ = embedding_figure(str(run))  # what `rayssl plot --embeddings` draws
    (ax,) = fig.axes
    assert sum(len(c.get_offsets()) for c in ax.collections) == 80  # every test image
    shown = sorted(int(t.get_text()) for t in ax.get_legend().get_texts())
    assert shown == sorted({int(p.parent.name) for p in _files(digits / "test")})


# ============================================================================ local mode, CLI


def test_flat_folder_ssl_in_local_mode_probes_on_labeled_test(digits, tmp_path, write_config):
    flat = _flat_copy(digits / "train", tmp_path / "flat", 128)
    data = {
        "name": "images",
        "path": str(flat),
        "test_path": str(digits / "test"),
        "val_fraction": 0,
        "batch_size": 32,
        "augment": {"preset": "byol"},
    }
    cfg = load_train_config(write_config({**SSL, "num_workers": 0, "data": data}))
    summary = fit(cfg)
    assert summary["global_steps"] == 128 // 32
    assert 0.0 <= summary["history"][-1]["knn_acc"] <= 1.0


def test_flat_folder_without_labels_skips_probes_with_a_note(digits, tmp_path, write_config):
    flat = _flat_copy(digits / "train", tmp_path / "flat", 64)
    data = {"name": "images", "path": str(flat), "val_fraction": 0, "batch_size": 32}
    config = write_config({**SSL, "num_workers": 0, "data": data})
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert "note: probes skipped" in result.output
    assert "knn_acc" not in result.output


def test_a_one_class_folder_skips_probes_and_refuses_supervised(digits, tmp_path, write_config):
    """Audit 35.15: a self-supervised run on a one-class folder trained, then failed at its
    final probe with no checkpoint kept; a supervised run was refused with a line that
    blamed the backbone's shape."""
    one = tmp_path / "one"
    shutil.copytree(digits / "train" / "3", one / "3")
    data = {"name": "images", "path": str(one), "val_fraction": 0.25, "batch_size": 8}
    ssl = write_config({**SSL, "name": "ssl", "num_workers": 0, "data": data}, name="ssl")
    result = CliRunner().invoke(main, ["train", str(ssl)])
    assert result.exit_code == 0, result.output
    assert "note: probes skipped: the data has one class" in result.output
    (run,) = (tmp_path / "runs").glob("ssl-*")
    assert list(run.glob("checkpoint_*/state.pt"))

    supervised = write_config(
        {"num_workers": 0, "epochs": 1, "data": data, "backbone": SSL["backbone"]}
    )
    result = CliRunner().invoke(main, ["train", str(supervised)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "has one class; supervised training needs labels of 2" in lines[0]


def test_in_memory_beyond_the_machine_is_one_line_not_a_memory_error(digits, write_config):
    """Audit 35.16: `in_memory: true` decoded without a size check: a MemoryError was
    reported as a corrupt (intact) image, or ended in a numpy traceback."""
    data = {
        "name": "images",
        "path": str(digits / "train"),
        "in_memory": True,
        "val_fraction": 0,
        "batch_size": 8,
    }
    huge = write_config({**SSL, "num_workers": 0, "data": {**data, "image_size": 8192}})
    result = CliRunner().invoke(main, ["train", str(huge)])  # 270 GiB: refused before decoding
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "this machine has available; set data.in_memory: false" in lines[0]

    # 9 GiB passes that check here; an 8 GiB address-space limit makes the decode itself fail
    big = write_config({**SSL, "num_workers": 0, "data": {**data, "image_size": 1500}}, name="big")
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from rayssl.cli import main\n"
        f"sys.argv = ['rayssl', 'train', {str(big)!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "need 9.1 GiB while decoding in memory" in lines[0], lines
    assert "cannot be decoded" not in done.stderr


def test_demo_images_command_writes_image_folders(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo-images", str(out), "--train", "30", "--test", "10"])
    assert result.exit_code == 0, result.output
    assert len(_files(out / "train")) == 30 and len(_files(out / "test")) == 10
    with Image.open(_files(out / "train")[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    again = CliRunner().invoke(main, ["demo-images", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
    assert len(_files(out / "train")) == 30


def _raw_pixel_accuracy(root: Path) -> float:
    """A standardised logistic regression on raw pixels, trained on train, scored on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def load(split):
        files = _files(root / split)
        x = np.stack([np.asarray(Image.open(f), np.float32).ravel() / 255 for f in files])
        return x, np.array([int(f.parent.name) for f in files])

    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=300, C=0.1).fit(scaler.transform(x_train), y_train)
    return float(probe.score(scaler.transform(x_test), y_test))


def test_the_demo_set_carries_the_label_in_shape_and_hard_hides_it(tmp_path):
    """Fair preset: shape carries the label, so even raw pixels are far above chance
    (measured 0.72 with 600 / 300 images); --hard: colour and place dominate, near chance
    (0.14). Each split shows every source digit once before any repeats."""
    fair = CliRunner().invoke(
        main, ["demo-images", str(tmp_path / "fair"), "--train", "600", "--test", "300"]
    )
    assert fair.exit_code == 0, fair.output
    assert "600 training images (600 distinct source digits)" in fair.output
    assert "300 test images (300 distinct" in fair.output
    hard = write_digit_images(tmp_path / "hard", train=600, test=300, seed=0, hard=True)
    assert hard["train"] == {"images": 600, "source_digits": 600}
    assert _raw_pixel_accuracy(tmp_path / "fair") > 0.6
    assert _raw_pixel_accuracy(tmp_path / "hard") < 0.3
    # more images than source digits (360 test digits): all of them, then repeats
    many = write_digit_images(tmp_path / "many", train=10, test=400, seed=1)
    assert many["test"] == {"images": 400, "source_digits": 360}


def test_the_probe_note_says_why_probes_cannot_run(digits, tmp_path):
    from rayssl.inference.evaluate import NO_PROBE_LABELS, NO_PROBE_SCORE_SPLIT, no_probe_reason

    labeled = load_splits(
        DataConfig(name="images", path=str(digits / "test"), val_fraction=0, batch_size=16)
    )
    assert labeled.probe_sets() is None and no_probe_reason(labeled) == NO_PROBE_SCORE_SPLIT
    flat = _flat_copy(digits / "test", tmp_path / "flat", 32)
    unlabeled = load_splits(
        DataConfig(name="images", path=str(flat), val_fraction=0, batch_size=16)
    )
    assert no_probe_reason(unlabeled) == NO_PROBE_LABELS


def test_the_driver_decodes_a_bounded_sample_of_large_streamed_images(tmp_path):
    """Streamed data decodes `data.probe_samples` training rows on the driver (statistics,
    LFR's selection, preflight), and every worker gets them: 4,096 at 224 px were 2.3 GiB of
    float32 in the driver and in each worker. Now at most 256 MiB: 445 rows at 224 px;
    at 32 px all of them, as before. Folder images and Parquet image bytes alike."""
    write_digit_images(tmp_path / "big", train=460, test=10, seed=0, size=224, image_format="jpeg")
    cfg = DataConfig(
        name="images", path=str(tmp_path / "big" / "train"), in_memory=False, val_fraction=0
    )
    assert cfg.probe_samples == 4096
    sample = load_splits(cfg, 0).train[0]
    assert sample.shape == (445, 3, 224, 224) and sample.dtype == torch.float32
    assert 0.0 <= float(sample.min()) and float(sample.max()) <= 1.0 and sample.std() > 0

    files = sorted((tmp_path / "big" / "train").rglob("*.jpg"))
    rows = tmp_path / "rows.parquet"
    labels = [int(f.parent.name) for f in files]
    pq.write_table(pa.table({"x": [f.read_bytes() for f in files], "y": labels}), rows)
    parquet = load_splits(DataConfig(name="parquet", path=str(rows), val_fraction=0), 0)
    assert parquet.train[0].shape == (445, 3, 224, 224)

    small = tmp_path / "small"
    write_digit_images(small, train=300, test=10, seed=0)
    few = DataConfig(name="images", path=str(small / "train"), in_memory=False, val_fraction=0)
    assert load_splits(few, 0).train[0].shape == (300, 3, 32, 32)  # under the bound: every row
