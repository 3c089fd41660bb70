"""The feature pass sharded over processes, as a Kubernetes Indexed Job runs it: `trainer
extract --shard I/N` against a real S3 store, then one `trainer train` that computes none."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from contract.storage import open_location
from tests.conftest import CACHE_BUCKET, DATA_BUCKET, MODELS_BUCKET, REPO, run_cli, unique
from trainer.extract import shard_of

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SHARDS = 3
SEED = ["--seed", "4"]


def extract(data: str, cache: str, index: int, base: list[str], *more: str
            ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", "extract", "--data", data,
                             "--cache", cache, "--shard", f"{index}/{SHARDS}", *base, *SEED,
                             "--quiet", *more], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def summary(proc: subprocess.Popen) -> dict[str, int]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    m = re.fullmatch(r"shard (\d)/3: (\d+) images, features (\d+) cached / (\d+) computed "
                     r"\(\w+\), "
                     r"(\d+) skipped; [\d.]+ s\n", out)
    assert m, out
    return dict(zip(("index", "images", "cached", "computed", "skipped"),
                    map(int, m.groups()), strict=True))


def entries(cache: str) -> int:
    return sum(e.path.endswith(".npy") for e in open_location(cache).list_files())


def test_three_shards_then_train_computes_nothing_and_serves_the_same_scores(seaweed,
                                                                              tiny_args,
                                                                              tmp_path):
    import tensorflow as tf

    from trainer.config import TrainConfig
    from trainer.job import run
    from trainer.sample_data import write_sample_data

    tiny_base_file = tiny_args[tiny_args.index("--base-model") + 1]

    data = f"s3://{DATA_BUCKET}/{unique('shards')}"
    write_sample_data(data, num_classes=2, per_class=15, seed=9, quiet=True)
    listing = [e.path for e in open_location(data).list_files()]
    sizes = [sum(shard_of(p, SHARDS) == i for p in listing) for i in range(SHARDS)]
    assert sum(sizes) == 30 and all(sizes)
    # Shard 0 is killed once some of its entries are written; run again, it computes the
    # rest only. (A busy machine can let it finish between two looks: then again, afresh.)
    for _attempt in range(3):
        cache = f"s3://{CACHE_BUCKET}/{unique('shards')}"
        first = extract(data, cache, 0, tiny_args, "--batch-size", "1")
        deadline = time.monotonic() + 300
        while entries(cache) == 0 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
        time.sleep(0.5)  # a PUT the store had already received lands
        kept = entries(cache)
        if first.returncode == -signal.SIGKILL and 0 < kept < sizes[0]:
            break
    else:
        raise AssertionError("shard 0 finished before it could be killed, three times")
    again = summary(extract(data, cache, 0, tiny_args))
    assert (again["images"], again["cached"], again["computed"]) == (sizes[0], kept,
                                                                     sizes[0] - kept)
    # The other two at once, as parallel indexes.
    others = [summary(p) for p in [extract(data, cache, i, tiny_args) for i in (1, 2)]]
    assert [o["computed"] for o in others] == sizes[1:]
    # Every image computed by exactly one shard, none twice.
    assert kept + again["computed"] + sum(o["computed"] for o in others) == 30
    assert entries(cache) == 30

    models = f"s3://{MODELS_BUCKET}/{unique('shards')}"
    sharded = run_cli("trainer", "train", "--data", data, "--cache", cache, "--output", models,
                      "--model-name", "m", "--version", "1", *tiny_args, *SEED, "--epochs", "3",
                      check=True)
    assert "features 30 cached / 0 computed" in sharded.stdout
    # The reference: the same training in one process, computing everything (in this one:
    # the CLI runs above already show the commands; this saves a TensorFlow start-up).
    alone = run(TrainConfig(data=data, cache=f"{cache}-alone", output=models, model_name="m",
                            version=2, base_model=tiny_base_file, seed=int(SEED[1]), epochs=3,
                            report_dir=str(tmp_path / "report"), quiet=True))
    assert (alone.metrics["features"]["from_cache"], alone.metrics["features"]["computed"]) \
        == (0, 30)

    # What the server would answer: both versions' serving_default on every image.
    images = tf.constant([open_location(data).read_bytes(p) for p in listing])
    scores = []
    for version in (1, 2):
        folder = tmp_path / str(version)
        for f in open_location(f"{models}/m/{version}").list_files():
            target = folder / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            open_location(f"{models}/m/{version}").download_file(f.path, target)
        signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        scores.append(signature(image_bytes=images)["scores"].numpy())
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)
