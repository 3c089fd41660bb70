"""`python -m trainer`: train and publish a model, or write a sample dataset.

Exit codes (DESIGN section 6, contract.errors): 0 success; 1 an unexpected error (keeps its
traceback); 2 bad usage or bad input; 3 storage, network or environment failure after retries
(no GPU where one was required); 4 finished, but the model is not good enough (accuracy
gate): nothing published.
"""

from __future__ import annotations

import os
import signal
import time

import click

from commandline import Group, is_quiet, verify_key_of
from commandline.native import quiet_native_logs
from contract.labels import DEFAULT_LABEL
from trainer import config as defaults
from trainer.precision import CHOICES as PRECISION_CHOICES

# TensorFlow leaves its oneDNN CPU kernels off by default on some x86 CPUs (AVX2-only ones
# among them), yet they run VGG16 over batches of 32 faster than its default kernels there
# (`make bench BENCH_ARGS=--onednn` compares both). TensorFlow reads this when it loads; the
# trainer imports it lazily, after this line. An explicit setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _terminate_on_sigterm() -> None:
    """SIGTERM (Kubernetes stopping the Job) unwinds like Ctrl-C, so cleanup code runs."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


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


@click.group(cls=Group)
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
def train(no_cache, **options) -> None:
    """Train the softmax head on a frozen VGG16 (or another --base-model) and publish a
    SavedModel version."""
    if options["cache"] and no_cache:
        raise click.UsageError("--cache and --no-cache exclude each other")
    if no_cache:
        options["cache"] = None  # the notebook's way: TrainConfig's cache=None
    elif options["cache"] is None:
        from platformdirs import user_cache_dir
        options["cache"] = f"{user_cache_dir('vgg16-transfer')}/features"
    _terminate_on_sigterm()
    started = time.perf_counter()
    from trainer.config import TrainConfig
    from trainer.preflight import preflight

    # The options are TrainConfig's fields, by name (tests/unit/test_cli.py holds them equal).
    config = TrainConfig(quiet=is_quiet(), **options)
    preflight(config)  # in seconds, before TensorFlow is even imported
    from trainer.job import run

    result = run(config)
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

    report_dir = options["report_dir"]
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
def extract(data, cache, shard, base_model, weights, seed, batch_size, precision,
            require_gpu) -> None:
    """One shard of the feature pass: fill the shared cache with this shard's fc2 features.

    Safe to run again after a kill (it computes only what is missing) and beside other
    shards; a later `train` with the same --data, --cache, --base-model, --weights and
    --seed computes none of them."""
    _terminate_on_sigterm()
    from trainer.config import resolve_weights
    from trainer.extract import parse_shard, preflight

    index, count = parse_shard(shard)
    weights = resolve_weights(base_model, weights)
    preflight(data, cache, base_model, weights)
    from trainer.extract import run_extract

    r = run_extract(data, cache, index, count, weights, seed, batch_size, is_quiet(),
                    require_gpu, precision, base_model)
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
def evaluate(model, data, baseline, report_dir, batch_size, verify_key) -> None:
    """Score a published version on a labelled folder through its serving_default signature
    (the graph TF Serving runs), optionally against a baseline version."""
    from pathlib import Path

    from trainer.evaluate import evaluate as run_evaluation

    key = verify_key_of(verify_key)
    metrics = run_evaluation(model, data, baseline, Path(report_dir), batch_size, key,
                             is_quiet())
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


@cli.command()
@click.option("--source", required=True, envvar="MODEL_SOURCE", metavar="URI/NAME",
              help="The model's folder: <models-uri>/<model-name>.")
@click.option("--candidate", type=int, required=True, envvar="CANDIDATE_VERSION",
              help="The version to promote.")
@click.option("--data", required=True, envvar="EVAL_DATA_URI",
              help="Labelled images both versions are scored on (local or s3://), held out "
                   "of training: e.g. a test set.")
@click.option("--label", "label_name", default=DEFAULT_LABEL,
              help="The label to move.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.0,
              help="Refuse (exit 4) when the candidate's accuracy is more than this below "
                   "the labelled version's on --data. 0: it must be at least as good.")
@click.option("--report-dir", type=click.Path(file_okay=False), default="promotion",
              help="Where the evaluation's report goes (metrics.json, pictures).")
@click.option("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE,
              help="Images per call of the model.")
@click.option("--verify-key", type=click.Path(dir_okay=False), envvar="VERIFY_KEY",
              help="Also require both versions to be signed with this public key.")
def promote(source, candidate, data, label_name, max_accuracy_drop, report_dir, batch_size,
            verify_key) -> None:
    """Move a label (stable) to a candidate version if it scores no worse on --data.

    Both versions are scored as `evaluate` scores them, in this process (their
    serving_default signatures), and the label moves in the store's _LABELS.json; pullers
    follow it. `serving rollback` moves it back."""
    from pathlib import Path

    from contract.labels import check_label
    from contract.model_folder import ModelFolder
    from trainer.evaluate import evaluate as run_evaluation

    key = verify_key_of(verify_key)
    folder = ModelFolder(source, key)
    label_name = check_label(label_name)

    def score(candidate_uri: str, baseline: str | None) -> dict:
        return run_evaluation(candidate_uri, data, baseline, Path(report_dir), batch_size,
                              key, is_quiet())

    p = folder.promote(candidate, label_name, max_accuracy_drop, score, data)
    if not p.moved:
        click.echo(f"{label_name} is already version {candidate} of {folder.model_name}")
    elif p.before is None:
        click.echo(f"promoted: {label_name} -> {candidate} ({folder.model_name}; accuracy "
                   f"{p.figures['candidate']:.4f} on --data; no version had the label)")
    else:
        f = p.figures
        click.echo(f"promoted: {label_name} {p.before} -> {p.after} ({folder.model_name}; "
                   f"accuracy {f['candidate']:.4f} vs {f['baseline']:.4f}, difference "
                   f"{f['difference']:+.4f}, 95% CI {f['ci'][0]:+.4f} to {f['ci'][1]:+.4f}, "
                   f"{f['images']} images)")


@cli.command("sample-data")
@click.option("--output", required=True, envvar="DATA_URI",
              help="Where to write the images: local folder or s3://bucket/prefix.")
@click.option("--classes", "num_classes", type=int, default=2, help="Number of classes (2-8).")
@click.option("--per-class", type=int, default=50, help="Images per class.")
@click.option("--seed", type=int, default=0, help="Seed: the same seed writes the same images.")
def sample_data(output, num_classes, per_class, seed) -> None:
    """Write a synthetic, visually separable labelled image set (shapes and colours)."""
    from trainer.sample_data import write_sample_data

    n = write_sample_data(output, num_classes, per_class, seed, is_quiet())
    click.echo(f"wrote {n} images ({num_classes} classes x {per_class}) to {output}")


@cli.command()
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="Local folder with one sub-folder per class.")
@click.option("--to", "to", required=True, envvar="DATA_URI",
              help="Where the dataset goes: s3://bucket/prefix (or a folder).")
def upload(data, to) -> None:
    """Copy a local image folder into object storage, skipping files already there."""
    from trainer.upload import upload_folder

    result = upload_folder(data, to, is_quiet())
    click.echo(f"uploaded {result.uploaded} files ({result.bytes / 1e6:.1f} MB) to {to}; "
               f"{result.skipped} already there")


def main() -> None:
    # TensorFlow's C++ log lines (CPU features, a missing CUDA driver, and the JPEG
    # decoder's "Premature end of JPEG data", which it logs at ERROR level) drown the job's
    # own output and break its progress bars. Every image the decoder refuses is listed,
    # with its reason, in the skipped files of the report and the run's summary instead;
    # real failures still surface as Python errors. Set before TensorFlow loads; an explicit
    # setting wins. (`python -m trainer` and the console script both come here.)
    quiet_native_logs()
    cli(prog_name="trainer")
