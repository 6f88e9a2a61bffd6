"""The `rayssl` commands. Exit codes: 0 success, 1 failed run, 2 bad input (one line).

rayssl train CONFIG.yaml [--set key=value ...] [--resume]   a run (cluster.fit)
rayssl tune SEARCH.yaml [--set ...] [--resume]              a Ray Tune search (tune.run_search)
rayssl eval RUN_DIR                                         kNN / linear probe of a run
rayssl export RUN_DIR --out FILE [--format torchscript|onnx]  its backbone, for elsewhere
rayssl runs [STORAGE_PATH] [--json]                         the table of runs
rayssl plot RUN_DIR [RUN_DIR ...] --out curves.png          learning curves
rayssl plot RUN_DIR --embeddings                            a 2-D map of its features
rayssl demo-images OUT [--hard] [--shards N]                the offline demo image set
rayssl configs [--copy DIR]                                 the example configs that come with it
rayssl methods                                              the built-in methods
"""

from __future__ import annotations

import contextlib
import sys
import time

LAUNCHED_AT = time.time()  # before the heavy imports: start-up time is measured from here


def _keep_embedded_ray_on_this_host() -> None:
    """A command that starts its own Ray (no RAY_ADDRESS) runs it on loopback only. Ray
    2.60 turns a loopback node address given to ray.init into the host's external one, and
    then binds its gRPC servers and its dashboard's and autoscaler's Prometheus endpoints
    (GET /metrics, no authentication) on every interface. Its single-machine mode, the
    default on Windows and macOS, binds every process to 127.0.0.1; this switch (read when
    Ray is imported, so before any import of it) turns that mode on here. A command that
    joins a cluster (RAY_ADDRESS, as under `ray job submit`) is left as it is."""
    import os

    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


_keep_embedded_ray_on_this_host()

import click  # noqa: E402

from rayssl import __version__  # noqa: E402
from rayssl.errors import ConfigError  # noqa: E402  (the schema, which imports torch, loads per command)

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
TRUST_HELP = (
    "Rebuild networks the checkpoint names by import path (package.module:function): "
    "that imports and calls them; only for files you trust."
)


def _fail(message: str, code: int) -> None:
    click.echo(f"rayssl: error: {message}", err=True)
    sys.exit(code)


def _stop_ray_logs() -> None:
    """Disconnect from Ray, which prints the worker lines it still holds and stops
    forwarding: a failed run's traceback lines from its workers then come before rayssl's
    one-line error, not after it (they arrive on a background thread)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rayssl")
def main() -> None:
    """Distributed supervised and self-supervised training on Ray."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set optimizer.lr=3e-4 (repeatable).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the newest run of this name from its latest checkpoint.",
)
@click.option(
    "--dashboard", is_flag=True, help="Start the Ray dashboard with the local Ray (off: faster)."
)
def train(config: str, overrides: tuple[str, ...], resume: bool, dashboard: bool) -> None:
    """Train the run described by CONFIG (a YAML file)."""
    from rayssl.cluster import RunFailed, fit
    from rayssl.cluster.records import final_line

    try:
        from rayssl.config import load_train_config

        cfg = load_train_config(config, overrides)
        if cfg.num_workers == 0:  # local mode: this process trains (cluster/start.py)
            from rayssl.cluster.start import tune_this_process

            tune_this_process()
        summary = fit(cfg, resume=resume, launched_at=LAUNCHED_AT, dashboard=dashboard)
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except RunFailed as exc:
        _stop_ray_logs()
        _fail(str(exc), EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILED)
    click.echo(final_line(summary))
    click.echo(f"rayssl: summary: {summary['path']}")
    if summary.get("ray_logs"):
        click.echo(f"rayssl: Ray's own logs: {summary['ray_logs']}")


@main.command("tune")
@click.argument("search", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a search value, e.g. --set num_samples=4 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue the search; finished trials are not re-run.")
def tune_command(search: str, overrides: tuple[str, ...], resume: bool) -> None:
    """Run the Ray Tune search described by SEARCH (a YAML file)."""
    from rayssl.tune import run_search

    try:
        run_search(search, overrides, resume=resume)
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


@main.command("eval")
@click.argument("path")
@click.option("--knn-k", type=click.IntRange(min=1), default=None, help="Neighbours for kNN.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Ray Train workers sharing the splits and the probes (0: in this process).",
)
@click.option("--use-gpu", is_flag=True, help="One GPU per worker (with --workers).")
@click.option("--trust-import-paths", is_flag=True, help=TRUST_HELP)
def evaluate(path: str, knn_k: int | None, trust_import_paths: bool, **where) -> None:
    """kNN and linear-probe accuracy of a run's (or a checkpoint's) frozen backbone; PATH is
    a folder or a URI (s3://, gs://, file://)."""
    from rayssl.inference.embed import task_error
    from rayssl.inference.evaluate import evaluate_checkpoint

    if where["use_gpu"] and not where["workers"]:
        _fail("--use-gpu needs --workers N (the workers hold the GPUs)", EXIT_BAD_INPUT)
    try:
        metrics = evaluate_checkpoint(
            path, knn_k=knn_k, trust_import_paths=trust_import_paths, **where
        )
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # a worker's or a Ray Data task's error: its own line
        message, bad_input = task_error(exc)
        _stop_ray_logs()
        _fail(message, EXIT_BAD_INPUT if bad_input else EXIT_FAILED)
    click.echo("  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


@main.command("embed")
@click.argument("source")
@click.argument("data")
@click.option("--out", required=True, help="Folder (or URI) to write the Parquet files to.")
@click.option("--actors", type=click.IntRange(min=1), default=1, help="Actors embedding.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--cpus-per-actor", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--part-rows",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Rows per Parquet file; a restart resumes after the last whole one.",
)
@click.option("--x-column", default="x", show_default=True, help="Parquet: the input column.")
@click.option("--y-column", default="y", show_default=True, help="Parquet: labels, if any.")
@click.option("--trust-import-paths", is_flag=True, help=TRUST_HELP)
def embed_command(source: str, data: str, out: str, **options) -> None:
    """Embeddings of DATA (an image folder, WebDataset shards or Parquet, a path or URI)
    by the backbone of SOURCE (a run, a checkpoint or an export), written to --out as Parquet."""
    from rayssl.inference.embed import EmbedJob, embed, task_error

    try:
        manifest = embed(EmbedJob(source, data, out, **options))
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # an error in a Ray Data task: its own line, not Ray's wrapper
        message, bad_input = task_error(exc)
        _stop_ray_logs()
        _fail(message, EXIT_BAD_INPUT if bad_input else EXIT_FAILED)
    click.echo(f"{manifest['rows']} embeddings of {manifest['dim']} values in {out}")


@main.command("export")
@click.argument("path")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["state_dict", "torchscript", "onnx"]),
    default="state_dict",
    show_default=True,
    help="A state_dict with what rebuilds the network, a traced TorchScript module, or an "
    "ONNX model (images in [0, 1] in, features out, normalisation inside, any batch size).",
)
@click.option("--trust-import-paths", is_flag=True, help=TRUST_HELP)
def export_command(path: str, out: str, fmt: str, trust_import_paths: bool) -> None:
    """Write the backbone of a run (its newest checkpoint) or of a checkpoint folder to OUT,
    for use outside rayssl or as another run's backbone.init_from."""
    from rayssl import progress
    from rayssl.runs.pretrained import EXPORT_STAGES, export

    try:
        with progress.stages(EXPORT_STAGES, "exporting") as stage:
            pretrained = export(path, out, fmt, trust_import_paths=trust_import_paths, stage=stage)
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    source = pretrained.source
    click.echo(
        f"rayssl: wrote the {source['method']} backbone {pretrained.describe()} of "
        f"{source['checkpoint']} (epoch {source['epoch']}, input "
        f"{pretrained.input_shape}) to {out} ({fmt})"
    )


@main.command("runs")
@click.argument("storage", default="./runs")
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for scripts.")
def runs_command(storage: str, as_json: bool) -> None:
    """List the runs under STORAGE (a storage_path: folder or URI; default ./runs): status,
    epochs done of planned, best metric, wall time, newest checkpoint."""
    import json
    from pathlib import Path

    from rayssl.runs.listing import format_table, list_runs

    if "://" not in storage and not Path(storage).is_dir():
        _fail(f"'{storage}' holds no runs (no such folder); give a storage_path", EXIT_BAD_INPUT)
    rows = list_runs(storage)
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


@main.command("plot")
@click.argument("runs", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="PNG to write [curves: curves.png here; --embeddings: embeddings.png in the run]",
)
@click.option(
    "--embeddings",
    is_flag=True,
    help="A 2-D map (UMAP if installed, else t-SNE) of one run's features on its test (or "
    "val) split, coloured by label",
)
@click.option("--trust-import-paths", is_flag=True, help=TRUST_HELP)
def plot_command(
    runs: tuple[str, ...], out: str | None, embeddings: bool, trust_import_paths: bool
) -> None:
    """Draw the learning curves of one or more RUNS (run folders) on one figure, or with
    --embeddings the map of one run's features."""
    try:
        if embeddings:
            if len(runs) != 1:
                raise ConfigError("--embeddings draws one run: give one RUN")
            from rayssl.inference.maps import write_embedding_map

            click.echo(f"rayssl: wrote {write_embedding_map(runs[0], out, trust_import_paths)}")
            return
        from rayssl.runs.plots import history_of, plot_runs

        histories = [history_of(run) for run in runs]
    except ConfigError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"rayssl: wrote {plot_runs(histories, out or 'curves.png')}")


@main.command("configs")
@click.option("--copy", "out", type=click.Path(file_okay=False), help="Copy them into this folder.")
def configs_command(out: str | None) -> None:
    """List the example configs that come with rayssl, or copy them (configs/ and
    tune_configs/, side by side) into a folder to start from."""
    from pathlib import Path

    from rayssl import examples

    if out is None:
        for name, about in examples.listing():
            click.echo(f"{name:<44} {about}")
        click.echo("copy them: rayssl configs --copy DIR")
        return
    try:
        copied = examples.copy_to(Path(out))
    except FileExistsError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"rayssl: copied {', '.join(str(p) for p in copied)}")


@main.command("methods")
def methods_command() -> None:
    """List the built-in methods (the `method:` of a config) and their classes."""
    from rayssl.methods.registry import BUILTINS

    for name, builtin in BUILTINS.items():
        cls = f"{builtin.cls.__module__}.{builtin.cls.__name__}"
        click.echo(f"{name:<14} {builtin.summary}  [{cls}]")
    click.echo("or any Method subclass by import path: method: 'package.module:Class'")


@main.command("demo-images")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", "n_train", type=click.IntRange(min=10), default=5000, show_default=True)
@click.option("--test", "n_test", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--hard",
    is_flag=True,
    help="random sizes and places, gradient backgrounds, any ink colour (a raw-pixel "
    "classifier is near chance on it)",
)
@click.option(
    "--size", type=click.IntRange(min=8), default=32, show_default=True, help="pixels a side"
)
@click.option(
    "--format", "image_format", type=click.Choice(["png", "jpeg"]), default="png",
    show_default=True,
)  # fmt: skip
@click.option(
    "--shards", "shard_size", type=click.IntRange(min=1), default=None,
    help="write WebDataset tar shards of at most this many samples (OUT/train/shard-*.tar, "
    "OUT/test/shard-*.tar; each sample an image and its .cls label) for data.name: "
    "webdataset; needs the webdataset extra",
)  # fmt: skip
def demo_images(
    out: str,
    n_train: int,
    n_test: int,
    seed: int,
    hard: bool,
    size: int,
    image_format: str,
    shard_size: int | None,
) -> None:
    """Render the offline demo image set into OUT: scikit-learn's digits as 32x32 RGB PNGs
    (or --size pixels a side, --format jpeg)
    (OUT/train/<digit>/, OUT/test/<digit>/, or WebDataset shards with --shards). By default
    shape carries the label: light ink of a random hue on a dark flat background, sizes and
    places in a narrow band."""
    from pathlib import Path

    from rayssl import progress
    from rayssl.data.demo import write_digit_images

    if Path(out).exists() and any(Path(out).iterdir()):
        _fail(f"'{out}' exists and is not empty; give a new folder", EXIT_BAD_INPUT)
    if shard_size is not None:
        try:
            import webdataset  # noqa: F401
        except ImportError:
            _fail(
                "--shards writes with the webdataset package: pip install 'rayssl[webdataset]'",
                EXIT_BAD_INPUT,
            )
    started = time.time()
    # a bar on a terminal; in a log (CI, a job's output) nothing until the final line
    shown = progress.shown()
    quiet = contextlib.nullcontext()
    total = n_train + n_test
    with (
        click.progressbar(length=total, label="rendering", file=sys.stderr)
        if shown
        else quiet as bar
    ):
        written = write_digit_images(
            out,
            n_train,
            n_test,
            seed=seed,
            hard=hard,
            size=size,
            image_format=image_format,
            on_image=(lambda: bar.update(1)) if shown else None,
            shard_size=shard_size,
        )
    tr, te = written["train"], written["test"]
    click.echo(
        f"rayssl: wrote {tr['images']} training images ({tr['source_digits']} distinct source "
        f"digits) and {te['images']} test images ({te['source_digits']} distinct, none shared "
        f"with training) to {out}/train and {out}/test in {time.time() - started:.1f}s"
    )


if __name__ == "__main__":
    main()
