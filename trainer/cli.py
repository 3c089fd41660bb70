"""`python -m trainer`: train and publish a model, or write a sample dataset.

Exit codes (DESIGN section 6, contract.errors): 0 success; 1 an unexpected error (keeps its
traceback); 2 bad usage or bad input; 3 storage, network or environment failure after retries
(no GPU where one was required); 4 finished, but the model is not good enough (accuracy
gate): nothing published.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import click

from contract.console import native_output, quiet_native_logs
from contract.errors import UserError
from trainer import config as defaults
from trainer.precision import CHOICES as PRECISION_CHOICES

# TensorFlow leaves its oneDNN CPU kernels off by default on some x86 CPUs (AVX2-only ones
# among them), yet they run VGG16 over batches of 32 faster than its default kernels there
# (`make bench BENCH_ARGS=--onednn` compares both). TensorFlow reads this when it loads; the
# trainer imports it lazily, after this line. An explicit setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _fail(error: UserError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


def _terminate_on_sigterm() -> None:
    """SIGTERM (Kubernetes stopping the Job) unwinds like Ctrl-C, so cleanup code runs."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's SavedModel writer and botocore narrate at INFO; keep the job's own lines.
    for noisy in ("absl", "tensorflow", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def precision_option(note: str):
    """--precision, as train and extract both take it (`note`: what it means for each)."""
    return click.option(
        "--precision", type=click.Choice(PRECISION_CHOICES), default="auto",
        envvar="PRECISION",
        help="Arithmetic of the VGG16 feature pass; features are stored as float32 and the "
             "exported model computes in float32 either way. auto: bfloat16 where the device "
             "computes it natively (NVIDIA compute capability 8.0+, CPUs with AVX512-BF16 or "
             f"AMX), else float32. {note}")


def base_model_options(note: str):
    """--base-model and --weights, as train and extract both take them."""
    def decorate(command):
        command = click.option(
            "--weights", default=None, envvar="WEIGHTS",
            help="VGG16's weights: 'imagenet'; 'auto' (ImageNet's if they are cached or can "
                 "be downloaded, otherwise random ones, with a warning: for a first try "
                 "offline); 'none' (random, for tests); or a Keras .h5/.weights.h5 file (local "
                 "path or s3://). Only with --base-model vgg16. The manifest records the "
                 f"weights used. [default: imagenet]{note}")(command)
        return click.option(
            "--base-model", default=defaults.VGG16, show_default=True, envvar="BASE_MODEL",
            help="The frozen network the head sits on: 'vgg16', or a Keras model file "
                 "(.keras, or a whole-model .h5; local path or s3://) with VGG16's "
                 "interface: one 224x224x3 input taking VGG16-preprocessed images and a "
                 "layer named fc2, of any width (read from the file). For example a VGG16 "
                 "you fine-tuned before, or a small VGG16-shaped network for quick runs. The "
                 "file carries its own weights.")(command)
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "show_default": True, "max_content_width": 100})
def cli() -> None:
    """Fine-tune a frozen VGG16 on a labelled image set and publish it for TF Serving."""


@cli.command()
@click.option("--data", required=True, envvar="DATA_URI",
              help="Dataset location: local folder or s3://bucket/prefix with one sub-folder "
                   "per class.")
@click.option("--output", required=True, envvar="MODELS_URI",
              help="Models location: versions go to <output>/<model-name>/<version>/.")
@click.option("--model-name", required=True, envvar="MODEL_NAME",
              help="Model name (a URL path segment: letters, digits, '_', '.', '-').")
@click.option("--epochs", type=int, default=defaults.DEFAULT_EPOCHS, envvar="EPOCHS",
              help="Training epochs for the softmax head.")
@click.option("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE,
              envvar="BATCH_SIZE", help="Batch size for feature extraction and training.")
@click.option("--learning-rate", type=float, default=defaults.DEFAULT_LEARNING_RATE,
              envvar="LEARNING_RATE", help="Adam learning rate.")
@click.option("--val-split", type=float, default=defaults.DEFAULT_VAL_SPLIT,
              envvar="VAL_SPLIT", help="Fraction of each class held out for validation.")
@click.option("--seed", type=int, default=defaults.DEFAULT_SEED, envvar="SEED",
              help="Seed for the split, the shuffles and the head's initial weights.")
@base_model_options("")
@click.option("--cache", "cache", default=None, envvar="FEATURE_CACHE",
              help="Feature cache location (local folder or s3://). "
                   "[default: the user cache folder]")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Train the original notebook's way: every image through VGG16 every epoch, "
                   "with every image held in memory (small sets; the cached path streams).")
@click.option("--cache-check", type=int, default=defaults.DEFAULT_CACHE_CHECK,
              envvar="CACHE_CHECK",
              help="Cache hits recomputed through VGG16 each run, chosen at random, to catch "
                   "entries that are not their images' features (exit 4): at least this "
                   "many. 0 and --cache-check-fraction 0: none.")
@click.option("--cache-check-fraction", type=float,
              default=defaults.DEFAULT_CACHE_CHECK_FRACTION, envvar="CACHE_CHECK_FRACTION",
              help="...and at least this share of the cache hits (a run that poisons k "
                   "entries is caught with probability 1 - (1 - share)^k).")
@precision_option("--no-cache: float32.")
@click.option("--min-val-accuracy", type=float, default=0.0, envvar="MIN_VAL_ACCURACY",
              help="Publish only if validation accuracy reaches this (else exit 4, "
                   "nothing published).")
@click.option("--test-split", type=float, default=0.0, envvar="TEST_SPLIT",
              help="Fraction of each class held out of training and validation, scored "
                   "once at the end (test loss, accuracy, per-class precision/recall, "
                   "confusion matrix in the report and the manifest). The notebook's "
                   "recipe: --val-split 0.15 --test-split 0.15.")
@click.option("--min-test-accuracy", type=float, default=0.0, envvar="MIN_TEST_ACCURACY",
              help="Publish only if test accuracy reaches this (else exit 4, nothing "
                   "published). Needs --test-split.")
@click.option("--version", type=int, default=None, envvar="MODEL_VERSION",
              help="Version number to publish. [default: UTC unix time at publish]")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              envvar="REPORT_DIR", help="Also write the report (metrics, plots) to this folder.")
@click.option("--require-gpu", is_flag=True, envvar="REQUIRE_GPU",
              help="Fail at once (exit 3) if TensorFlow sees no GPU, instead of training on "
                   "the CPU.")
@click.option("--signing-key", type=click.Path(dir_okay=False), default=None,
              envvar="SIGNING_KEY",
              help="PEM EC private key (P-256/384/521): sign the version with OpenSSF model "
                   "signing (model.sig). Without it the version is published unsigned.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--verbose", is_flag=True,
              help="Also show TensorFlow's native start-up and log lines.")
def train(data, output, model_name, epochs, batch_size, learning_rate, val_split, seed,
          base_model, weights, cache, no_cache, cache_check, cache_check_fraction, precision,
          min_val_accuracy,
          test_split, min_test_accuracy, version, report_dir, require_gpu, signing_key, quiet,
          verbose) -> None:
    """Train the softmax head on a frozen VGG16 (or another --base-model) and publish a
    SavedModel version."""
    if cache and no_cache:
        raise click.UsageError("--cache and --no-cache exclude each other")
    if not no_cache and cache is None:
        from platformdirs import user_cache_dir
        cache = f"{user_cache_dir('vgg16-transfer')}/features"
    native_output(verbose)
    _setup_logging(quiet)
    _terminate_on_sigterm()
    started = time.perf_counter()
    try:
        from trainer.config import TrainConfig
        from trainer.preflight import preflight

        config = TrainConfig(data=data, output=output, model_name=model_name, epochs=epochs,
                             batch_size=batch_size, learning_rate=learning_rate,
                             val_split=val_split, seed=seed, base_model=base_model,
                             weights=weights,
                             cache=None if no_cache else cache, cache_check=cache_check,
                             cache_check_fraction=cache_check_fraction,
                             precision=precision,
                             min_val_accuracy=min_val_accuracy, test_split=test_split,
                             min_test_accuracy=min_test_accuracy, version=version,
                             report_dir=report_dir, require_gpu=require_gpu,
                             signing_key=signing_key, quiet=quiet)
        preflight(config)  # in seconds, before TensorFlow is even imported
        from trainer.job import run

        result = run(config)
    except UserError as e:
        _fail(e)
    m = result.metrics
    tested = f", test_accuracy {m['test']['accuracy']:.4f}" if "test" in m else ""
    held_out = f" / {m['images']['test']} test" if m["images"]["test"] else ""
    click.echo(f"published {result.uri}  (val_accuracy {m['validation']['accuracy']:.4f}"
               f"{tested}, {m['images']['train']} train / {m['images']['val']} val"
               f"{held_out} images, "
               f"{len(m['skipped'])} skipped; features {m['features']['from_cache']} cached / "
               f"{m['features']['computed']} computed ({m['features']['precision']}); "
               f"{'signed by key ' + result.signed_by if result.signed_by else 'unsigned'}; "
               f"{time.perf_counter() - started:.1f} s)")
    from trainer.job import REPORT_SUBDIR
    from trainer.report import CONFUSION_FILE, CURVES_FILE

    copy = f"; a copy in {report_dir}" if report_dir else ""
    click.echo(f"report: {result.uri}/{REPORT_SUBDIR}/ (metrics.json, {CURVES_FILE}, "
               f"{CONFUSION_FILE}){copy}")


@cli.command()
@click.option("--data", required=True, envvar="DATA_URI",
              help="Dataset location (as for train).")
@click.option("--cache", required=True, envvar="FEATURE_CACHE",
              help="The shared feature cache (local folder or s3://) that train reads.")
@click.option("--shard", default=None, metavar="I/N",
              help="Compute shard I of N (0 <= I < N): the images whose path hashes to I. "
                   "[default: JOB_COMPLETION_INDEX/SHARD_COUNT from the environment (a "
                   "Kubernetes Indexed Job), else 0/1, every image]")
@base_model_options(" As for train: the base and its weights name the cache's entries.")
@click.option("--seed", type=int, default=defaults.DEFAULT_SEED, envvar="SEED",
              help="As for train (--weights none: the random weights).")
@click.option("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE,
              envvar="BATCH_SIZE", help="Images per VGG16 call.")
@precision_option("Part of the cache's key: train with the same precision.")
@click.option("--require-gpu", is_flag=True, envvar="REQUIRE_GPU",
              help="Fail at once (exit 3) if TensorFlow sees no GPU.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verbose", is_flag=True,
              help="Also show TensorFlow's native start-up and log lines.")
def extract(data, cache, shard, base_model, weights, seed, batch_size, precision, require_gpu,
            quiet, verbose) -> None:
    """One shard of the feature pass: fill the shared cache with this shard's fc2 features.

    Safe to run again after a kill (it computes only what is missing) and beside other
    shards; a later `train` with the same --data, --cache, --base-model, --weights and
    --seed computes none of them."""
    native_output(verbose)
    _setup_logging(quiet)
    _terminate_on_sigterm()
    try:
        from trainer.config import resolve_weights
        from trainer.extract import parse_shard, preflight

        index, count = parse_shard(shard)
        weights = resolve_weights(base_model, weights)
        preflight(data, cache, base_model, weights)
        from trainer.extract import run_extract

        r = run_extract(data, cache, index, count, weights, seed, batch_size, quiet,
                        require_gpu, precision, base_model)
    except UserError as e:
        _fail(e)
    click.echo(f"shard {r.index}/{r.count}: {r.images} images, features {r.from_cache} "
               f"cached / {r.computed} computed ({r.precision}), {len(r.skipped)} "
               f"skipped; {r.seconds:.1f} s")


@cli.command()
@click.option("--model", required=True, envvar="MODEL_URI", metavar="URI[/VERSION]",
              help="<models-uri>/<model-name>, optionally /<version>. Without a version: the "
                   "version labelled stable, else the newest published one.")
@click.option("--data", required=True, envvar="DATA_URI",
              help="Labelled images to score: local folder or s3://, one sub-folder per "
                   "class (class names as the model's).")
@click.option("--baseline", default=None, metavar="VERSION|LABEL",
              help="Also score this version (or the version with this label) on the same "
                   "images and report the difference, with a bootstrap confidence interval "
                   "on the accuracy difference.")
@click.option("--report-dir", type=click.Path(file_okay=False), default="evaluation",
              help="Where metrics.json, confusion_matrix.png, misclassified.png and "
                   "misclassified.html go.")
@click.option("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE,
              help="Images per call of the model.")
@click.option("--verify-key", type=click.Path(dir_okay=False), default=None,
              envvar="VERIFY_KEY",
              help="Score only versions signed with this public key (PEM).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verbose", is_flag=True,
              help="Also show TensorFlow's native start-up and log lines.")
def evaluate(model, data, baseline, report_dir, batch_size, verify_key, quiet,
             verbose) -> None:
    """Score a published version on a labelled folder through its serving_default signature
    (the graph TF Serving runs), optionally against a baseline version."""
    from pathlib import Path

    native_output(verbose)
    _setup_logging(True)
    try:
        from contract.signing import VerifyKey
        from trainer.evaluate import evaluate as run_evaluation

        key = VerifyKey.load(verify_key) if verify_key else None
        metrics = run_evaluation(model, data, baseline, Path(report_dir), batch_size, key,
                                 quiet)
    except UserError as e:
        _fail(e)
    for m in ([metrics["candidate"], metrics["baseline"]] if "candidate" in metrics
              else [metrics]):
        click.echo(f"version {m['version']} of {m['model']} ({m['chosen_by']}): accuracy "
                   f"{m['accuracy']:.4f}, loss {m['loss']:.4f} on {m['images']} images"
                   f" ({len(m['unclassified'])} not classified)")
    if "difference" in metrics:
        d = metrics["difference"]
        low, high = d["accuracy_ci"]
        click.echo(f"difference ({d['candidate']} - {d['baseline']}): accuracy "
                   f"{d['accuracy']:+.4f} ({d['confidence']:.0%} CI {low:+.4f} to "
                   f"{high:+.4f}), loss {d['loss']:+.4f}")
        for name, diff in d["per_class"].items():
            click.echo(f"  {name}: precision {diff['precision']:+.4f}, recall "
                       f"{diff['recall']:+.4f}, f1 {diff['f1']:+.4f}")
    click.echo(f"report: {report_dir}/ (metrics.json, confusion_matrix.png, "
               "misclassified.png, misclassified.html)")


@cli.command("sample-data")
@click.option("--output", required=True, envvar="DATA_URI",
              help="Where to write the images: local folder or s3://bucket/prefix.")
@click.option("--classes", "num_classes", type=int, default=2, help="Number of classes (2-8).")
@click.option("--per-class", type=int, default=50, help="Images per class.")
@click.option("--seed", type=int, default=0, help="Seed: the same seed writes the same images.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sample_data(output, num_classes, per_class, seed, quiet) -> None:
    """Write a synthetic, visually separable labelled image set (shapes and colours)."""
    from trainer.sample_data import write_sample_data

    try:
        n = write_sample_data(output, num_classes, per_class, seed, quiet)
    except UserError as e:
        _fail(e)
    click.echo(f"wrote {n} images ({num_classes} classes x {per_class}) to {output}")


@cli.command()
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Local folder with one sub-folder per class.")
@click.option("--to", "to", required=True, envvar="DATA_URI",
              help="Where the dataset goes: s3://bucket/prefix (or a folder).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def upload(data, to, quiet) -> None:
    """Copy a local image folder into object storage, skipping files already there."""
    from trainer.upload import upload_folder

    try:
        result = upload_folder(data, to, quiet)
    except UserError as e:
        _fail(e)
    click.echo(f"uploaded {result.uploaded} files ({result.bytes / 1e6:.1f} MB) to {to}; "
               f"{result.skipped} already there")


def _show_envvars(group: click.Group) -> None:
    """`--help` names the environment variable each option reads (containers set them)."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True


_show_envvars(cli)


def main() -> None:
    # TensorFlow's C++ log lines (CPU features, a missing CUDA driver, and the JPEG
    # decoder's "Premature end of JPEG data", which it logs at ERROR level) drown the job's
    # own output and break its progress bars. Every image the decoder refuses is listed,
    # with its reason, in the skipped files of the report and the run's summary instead;
    # real failures still surface as Python errors. Set before TensorFlow loads; an explicit
    # setting wins. (`python -m trainer` and the console script both come here.)
    quiet_native_logs()
    cli(prog_name="trainer")
