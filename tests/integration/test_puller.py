"""The puller against a real S3 store: only verified versions, atomically, never lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from contract.errors import UserError
from contract.manifest import MANIFEST_FILE, build_manifest, identity_bytes, list_version_files
from contract.names import IDENTITY_FILE
from contract.storage import S3Location, open_location, s3_client
from serving.puller import Puller
from tests.conftest import DATA_BUCKET, MODELS_BUCKET, REPO, aws_env_of, run_cli, unique
from tools.seaweed import SeaweedFS
from trainer.publish import publish

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def make_version(tmp: Path, model: str, version: int, seed: str = "",
                 identity: bool = True) -> tuple[Path, list, dict]:
    """A small stand-in version folder with a true manifest (the puller checks files, not
    TensorFlow), the way the trainer lays it out."""
    folder = tmp / f"build-{model}-{version}-{uuid.uuid4().hex[:6]}"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(f"graph {version}{seed}".encode() * 100)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(300_000))
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "assets").mkdir()
    (folder / "assets" / "labels.txt").write_text("a\nb\n")
    if identity:  # what the trainer writes; versions from before it have none
        (folder / IDENTITY_FILE).write_bytes(identity_bytes(model, version, ["a", "b"]))
    files = list_version_files(folder)
    manifest = build_manifest(model_name=model, version=version, classes=["a", "b"],
                              base_model={}, input_spec={}, metrics={}, dataset={},
                              files=files)
    return folder, files, manifest


def publish_fake(tmp: Path, models_uri: str, model: str, version: int, **kw) -> Path:
    folder, files, manifest = make_version(tmp, model, version, **kw)
    publish(folder, files, manifest, models_uri, model, version, quiet=True)
    return folder


@pytest.fixture
def models_uri(seaweed):
    return f"s3://{MODELS_BUCKET}/{unique('pull')}"


def staging_left(dest: Path) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name.startswith(".")] if dest.exists() else []


def test_sync_installs_verified_versions_atomically(tmp_path, models_uri):
    built = {v: publish_fake(tmp_path, models_uri, "m", v) for v in (1, 2)}
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, keep=2, quiet=True).sync_once()
    assert sorted(result.installed) == [1, 2] and result.local == [1, 2]
    for version, folder in built.items():
        for f in list_version_files(folder):
            assert (dest / str(version) / f.path).read_bytes() == (folder / f.path).read_bytes()
        manifest = json.loads((dest / str(version) / MANIFEST_FILE).read_text())
        assert manifest["version"] == version
    assert staging_left(dest) == []
    # A second sync has nothing to do.
    assert Puller(f"{models_uri}/m", dest, keep=2, quiet=True).sync_once().installed == []


def test_a_version_without_manifest_is_ignored(tmp_path, models_uri):
    publish_fake(tmp_path, models_uri, "m", 1)
    folder, files, _ = make_version(tmp_path, "m", 2)
    half = open_location(f"{models_uri}/m/2")
    for f in files:  # files uploaded, manifest not (yet)
        half.upload_file(f.path, folder / f.path, None)
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, quiet=True).sync_once()
    assert result.local == [1] and not (dest / "2").exists()


def test_a_tampered_file_is_rejected_and_retried_only_once_it_changes(tmp_path, models_uri,
                                                                      monkeypatch, caplog):
    publish_fake(tmp_path, models_uri, "m", 1)
    folder = publish_fake(tmp_path, models_uri, "m", 2)
    remote = open_location(f"{models_uri}/m/2")
    original = (folder / "saved_model.pb").read_bytes()
    remote.write_bytes("saved_model.pb", original[:-1] + b"X")  # same size, other content
    dest = tmp_path / "serve" / "m"
    puller = Puller(f"{models_uri}/m", dest, keep=2, quiet=True)
    result = puller.sync_once()
    assert result.rejected == {2: "saved_model.pb does not match its sha256 in the manifest"}
    assert result.local == [1] and not (dest / "2").exists() and staging_left(dest) == []
    # Unchanged in the store: not downloaded again, and not logged again, on later syncs.
    fetched = []
    real_download = S3Location.download_file
    monkeypatch.setattr(S3Location, "download_file",
                        lambda self, path, *a, **kw: fetched.append(path) or
                        real_download(self, path, *a, **kw))
    caplog.clear()
    with caplog.at_level("WARNING", logger="serving.puller"):
        assert puller.sync_once().rejected == result.rejected
        assert puller.sync_once().rejected == result.rejected
    assert fetched == [] and "rejected version 2" not in caplog.text
    remote.write_bytes("saved_model.pb", original)  # repaired: the next sync takes it
    assert puller.sync_once().installed == [2]
    assert "saved_model.pb" in fetched


def test_manifests_with_escaping_paths_or_another_model_are_rejected(tmp_path, models_uri):
    publish_fake(tmp_path, models_uri, "m", 1)
    remote = open_location(f"{models_uri}/m")
    _, _, manifest = make_version(tmp_path, "m", 2)
    manifest["files"].append({"path": "../../etc/cron.d/evil", "size": 1, "sha256": "a" * 64})
    remote.write_bytes(f"2/{MANIFEST_FILE}", json.dumps(manifest).encode())
    _, _, other = make_version(tmp_path, "other", 3)
    remote.write_bytes(f"3/{MANIFEST_FILE}", json.dumps(other).encode())
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, keep=3, quiet=True).sync_once()
    assert "escapes the version folder" in result.rejected[2]
    assert "manifest is for model 'other', expected 'm'" in result.rejected[3]
    assert result.local == [1]
    assert not (tmp_path / "etc").exists()


def test_keep_prunes_old_versions_but_never_the_newest(tmp_path, models_uri):
    dest = tmp_path / "serve" / "m"
    puller = Puller(f"{models_uri}/m", dest, keep=2, quiet=True)
    for version in (1, 2, 3):
        publish_fake(tmp_path, models_uri, "m", version)
        puller.sync_once()
    assert puller.local_versions() == [2, 3]
    assert Puller(f"{models_uri}/m", dest, keep=1, quiet=True).sync_once().local == [3]
    assert sorted(p.name for p in dest.iterdir()) == ["3"]


def test_local_sources_work_and_symlinks_are_refused(tmp_path):
    models = tmp_path / "models"
    publish_fake(tmp_path, str(models), "m", 1)
    folder = publish_fake(tmp_path, str(models), "m", 2)
    linked = models / "m" / "2" / "assets" / "labels.txt"
    linked.unlink()
    linked.symlink_to(folder / "assets" / "labels.txt")  # same content, but a link
    result = Puller(str(models / "m"), tmp_path / "serve" / "m", quiet=True).sync_once()
    assert result.local == [1] and "symbolic link" in result.rejected[2]


def test_symlinked_folders_in_a_local_source_are_refused(tmp_path):
    """A folder link could point anywhere on the machine (a secret, another model): neither
    a folder inside a version nor the version folder itself may be one."""
    models = tmp_path / "models"
    publish_fake(tmp_path, str(models), "m", 1)
    publish_fake(tmp_path, str(models), "m", 2)
    elsewhere = tmp_path / "elsewhere-assets"
    (models / "m" / "2" / "assets").rename(elsewhere)
    (models / "m" / "2" / "assets").symlink_to(elsewhere, target_is_directory=True)
    publish_fake(tmp_path, str(tmp_path / "other"), "m", 3)
    (models / "m" / "3").symlink_to(tmp_path / "other" / "m" / "3", target_is_directory=True)
    dest = tmp_path / "serve" / "m"
    result = Puller(str(models / "m"), dest, keep=3, quiet=True).sync_once()
    assert result.rejected[2] == ("assets/labels.txt is under the symbolically linked folder "
                                  "assets")
    assert result.rejected[3] == "the version folder 3 is a symbolic link"
    assert result.local == [1] and sorted(p.name for p in dest.iterdir()) == ["1"]


def test_init_container_exit_codes(tmp_path, seaweed, models_uri):
    dest = tmp_path / "serve" / "m"
    proc = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest", str(dest))
    assert proc.returncode == 3  # nothing to serve yet: retryable, not a crash (1)
    assert f"error: no verified version of 'm' under {models_uri}/m" in proc.stderr
    publish_fake(tmp_path, models_uri, "m", 1)
    proc = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest", str(dest), "-q")
    assert proc.returncode == 0 and "versions present" in proc.stdout
    unreachable = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "2"}
    proc = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest",
                   str(tmp_path / "empty" / "m"), env=unreachable)
    assert proc.returncode == 3 and "cannot reach the object store" in proc.stderr
    # With a verified version already present, an unreachable store is not fatal.
    proc = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest", str(dest),
                   env=unreachable)
    assert proc.returncode == 0 and "serving the local versions [1]" in proc.stdout


def test_init_container_waits_for_the_first_version_instead_of_crash_looping(tmp_path,
                                                                            models_uri):
    """First deploy: serving pods start before the first training run has published."""
    dest = tmp_path / "serve" / "m"
    log = (tmp_path / "wait.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "serving", "pull", "--source",
                             f"{models_uri}/m", "--dest", str(dest), "--wait-timeout", "120",
                             "--interval", "0.5"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=REPO)
    try:
        wait_for(lambda: "waiting for the first verified version of m" in read(log))
        assert proc.poll() is None  # still waiting, not failed
        publish_fake(tmp_path, models_uri, "m", 7)
        assert proc.wait(60) == 0, read(log)
    finally:
        proc.kill()
    assert (dest / "7" / "saved_model.pb").is_file()
    assert "versions present" in read(log)
    lines = [json.loads(line) for line in read(log).splitlines() if line.startswith("{")]
    waiting = [x for x in lines if "waiting for the first" in x["message"]]
    assert len(waiting) == 1  # one line a minute, not one per poll
    assert f"under {models_uri}/m" in waiting[0]["message"]
    # And a deadline that passes is exit 3 with one line, so the pod restarts and says why.
    started = time.monotonic()
    proc2 = run_cli("serving", "pull", "--source", f"{models_uri}/none", "--dest",
                    str(tmp_path / "other" / "none"), "--wait-timeout", "1.5", "--interval",
                    "0.5", "-q")
    assert proc2.returncode == 3 and time.monotonic() - started < 60
    [line] = [x for x in proc2.stderr.splitlines() if x.startswith("error:")]
    assert "no verified version of 'none'" in line and "gave up after waiting" in line


@pytest.mark.slow
def test_watch_survives_a_store_outage_and_picks_up_new_versions(tmp_path):
    store = SeaweedFS(tmp_path / "store", access_key="w-" + uuid.uuid4().hex[:8],
                      secret_key=uuid.uuid4().hex)
    store.start()
    store.create_bucket("models")
    env = {**store.client_env(os.environ), "AWS_MAX_ATTEMPTS": "2"}
    dest = tmp_path / "serve" / "m"
    log = (tmp_path / "puller.log").open("w+")
    with aws_env_of(store):
        proc = subprocess.Popen([sys.executable, "-m", "serving", "pull", "--source",
                                 "s3://models/m", "--dest", str(dest), "--watch",
                                 "--interval", "0.5"], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            publish_fake(tmp_path, "s3://models", "m", 1)
            wait_for(lambda: (dest / "1").is_dir())
            store.stop()
            wait_for(lambda: "sync failed" in read(log))
            time.sleep(2)  # several failed polls
            assert (dest / "1").is_dir() and proc.poll() is None  # nothing lost, still running
            store.start()
            s3_client.cache_clear()  # drop pooled connections to the stopped server
            publish_fake(tmp_path, "s3://models", "m", 2)
            wait_for(lambda: (dest / "2").is_dir(), timeout=120)
            # Logged when the sync that installed version 2 returns, just after the rename.
            wait_for(lambda: "object store reachable again" in read(log), timeout=10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert sorted(p.name for p in dest.iterdir()) == ["1", "2"]
        finally:
            if proc.poll() is None:
                proc.kill()
            store.stop()


def read(log) -> str:
    log.seek(0)
    return log.read()


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("change, reason", [
    (lambda m: m.update(format=2), "unknown manifest format 2"),
    (lambda m: m.pop("files"), "missing field 'files'"),
    (lambda m: m.update(classes="a,b"), "field 'classes' has the wrong type"),
    (lambda m: m.update(version="2"), "field 'version' has the wrong type"),
    (lambda m: m["files"][0].update(sha256=123), "sha256 must be 64 lowercase hex digits"),
    (lambda m: m["files"].append({"path": "assets/extra.bin", "size": 3,
                                  "sha256": "a" * 64}), "assets/extra.bin"),
])
def test_bad_manifests_are_refused_with_their_reason(tmp_path, models_uri, change, reason):
    publish_fake(tmp_path, models_uri, "m", 1)
    folder, files, manifest = make_version(tmp_path, "m", 2)
    remote = open_location(f"{models_uri}/m/2")
    for f in files:
        remote.upload_file(f.path, folder / f.path, None)
    change(manifest)
    remote.write_bytes(MANIFEST_FILE, json.dumps(manifest).encode())
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, keep=2, quiet=True).sync_once()
    assert reason in result.rejected[2]
    assert result.local == [1] and staging_left(dest) == []


def _raw_manifest_version(tmp_path, models_uri, version_name: str, manifest_bytes: bytes,
                          upload_files: bool = True) -> None:
    """Version folder `version_name` in the store with the given manifest bytes."""
    folder, files, _ = make_version(tmp_path, "m", 2)
    remote = open_location(f"{models_uri}/m/{version_name}")
    if upload_files:
        for f in files:
            remote.upload_file(f.path, folder / f.path, None)
    remote.write_bytes(MANIFEST_FILE, manifest_bytes)


@pytest.mark.parametrize("case", ["deep nesting", "huge", "a and a/b", "nul byte",
                                  "version 2**64", "size before download"])
def test_hostile_store_contents_reject_one_version_and_never_stop_the_puller(
        tmp_path, models_uri, case, monkeypatch):
    """Each of these escaped as an uncaught exception and crashed the init container (and
    so every new pod); now each rejects only its version, with the reason."""
    publish_fake(tmp_path, models_uri, "m", 1)
    _, files, manifest = make_version(tmp_path, "m", 2)
    expected = None
    if case == "deep nesting":
        body, expected = b"[" * 100_000 + b"]" * 100_000, "nested too deeply"
    elif case == "huge":
        body, expected = b" " * (2 << 20) + b"{}", "larger than 1048576 bytes"
    elif case == "a and a/b":
        manifest["files"] += [{"path": "assets", "size": 1, "sha256": "a" * 64}]
        body, expected = json.dumps(manifest).encode(), "listed as a file and as a folder"
    elif case == "nul byte":
        manifest["files"][0]["path"] = "variables/x\u0000y"
        body, expected = json.dumps(manifest).encode(), "control character"
    elif case == "version 2**64":
        manifest["version"] = 2**64
        body, expected = json.dumps(manifest).encode(), "below 2**63"
    else:  # the manifest says a file is tiny; the store holds a big one: refused unread
        manifest["files"] = [dict(f, size=1) if f["path"].startswith("variables/variables.data")
                             else f for f in manifest["files"]]
        body, expected = json.dumps(manifest).encode(), "the manifest says 1"
    _raw_manifest_version(tmp_path, models_uri, "2", body)
    downloads = []
    real_download = S3Location.download_file

    def counting(self, path, local, progress=None, size=None):
        downloads.append(f"{self.uri}/{path}")
        return real_download(self, path, local, progress, size)

    monkeypatch.setattr(S3Location, "download_file", counting)
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, keep=2, quiet=True).sync_once()
    assert expected in result.rejected[2], result.rejected
    assert result.local == [1] and staging_left(dest) == []
    assert not [d for d in downloads if "/m/2/" in d]  # refused before any byte was fetched


def test_version_folders_that_are_not_ascii_numbers_below_2_63_are_not_versions(
        tmp_path, models_uri):
    publish_fake(tmp_path, models_uri, "m", 1)
    for name in ("²", str(2**64), "٣"):  # a superscript two, 2**64, an Arabic-Indic three
        open_location(f"{models_uri}/m/{name}").write_bytes("saved_model.pb", b"x")
    puller = Puller(f"{models_uri}/m", tmp_path / "serve" / "m", keep=1, quiet=True)
    assert puller.remote_versions() == [1]
    result = puller.sync_once()
    assert result.local == [1] and result.rejected == {}  # --keep 1 kept the real version


def test_the_serving_identity_reads_models_and_can_write_nothing(tmp_path, seaweed, models_uri):
    """The puller's own credentials (compose's SERVING_*, Kubernetes' s3-credentials-serving)
    against SeaweedFS configured as compose configures it: pulling works; writing, deleting
    and reading other buckets are refused by the store."""
    import boto3
    from botocore.exceptions import ClientError

    publish_fake(tmp_path, models_uri, "m", 1)
    env = seaweed.serving_env()
    dest = tmp_path / "serve" / "m"
    proc = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest", str(dest), "-q",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "1" / MANIFEST_FILE).is_file()
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    bucket, prefix = models_uri.removeprefix("s3://").split("/", 1)
    attempts = {
        "write a version": lambda: client.put_object(Bucket=bucket, Key=f"{prefix}/m/2/x",
                                                     Body=b"x"),
        "delete a manifest": lambda: client.delete_object(
            Bucket=bucket, Key=f"{prefix}/m/1/{MANIFEST_FILE}"),
        "read the datasets": lambda: client.list_objects_v2(Bucket="datasets"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ClientError, match="AccessDenied"):
            attempt()
            pytest.fail(f"the serving identity could {what}")
    assert open_location(f"{models_uri}/m/1").exists(MANIFEST_FILE)


@pytest.mark.parametrize("unreadable", ["variables/variables.index", MANIFEST_FILE])
def test_an_object_the_store_will_not_hand_out_rejects_that_version_only(
        tmp_path, models_uri, seaweed, unreadable):
    """An object stored with SSE-C (readable only with its customer key, as an archived
    one is only after a restore): the store answers 400 for it. That version is rejected,
    the good one installed, the sync goes on (issue 27, item 2)."""
    publish_fake(tmp_path, models_uri, "m", 1)
    built = publish_fake(tmp_path, models_uri, "m", 2)
    bucket, prefix = models_uri.removeprefix("s3://").split("/", 1)
    seaweed._client().put_object(Bucket=bucket, Key=f"{prefix}/m/2/{unreadable}",
                                 Body=(built / unreadable).read_bytes(),
                                 SSECustomerAlgorithm="AES256",
                                 SSECustomerKey=os.urandom(32))
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, keep=2, quiet=True).sync_once()
    assert result.local == [1] and list(result.rejected) == [2]
    assert "object store error" in result.rejected[2] and unreadable in result.rejected[2]
    assert staging_left(dest) == []


def test_a_version_over_the_size_cap_is_refused_before_a_byte_is_downloaded(
        tmp_path, models_uri, monkeypatch):
    """Issue 27: a manifest that lists 400 MiB (truly stored) filled the serving volume
    before it was rejected. A version over --max-version-mib is refused from its listing."""
    publish_fake(tmp_path, models_uri, "m", 1)
    folder, files, manifest = make_version(tmp_path, "m", 2)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(3 << 20))
    files = list_version_files(folder)
    publish(folder, files, dict(manifest, files=[f.__dict__ for f in files]), models_uri,
            "m", 2, quiet=True)
    fetched = []
    real_download = S3Location.download_file
    monkeypatch.setattr(S3Location, "download_file",
                        lambda self, path, *a, **kw: fetched.append(f"{self.uri}/{path}") or
                        real_download(self, path, *a, **kw))
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{models_uri}/m", dest, keep=2, quiet=True, max_version_mib=2).sync_once()
    assert result.local == [1]
    assert "its files add up to 3 MiB, more than the 2 MiB a version may have " \
           "(--max-version-mib)" in result.rejected[2]
    assert not [p for p in fetched if "/m/2/" in p] and staging_left(dest) == []
    # The flag: one line and exit 2 for a value that is not a size.
    proc = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest",
                   str(tmp_path / "x" / "m"), "--max-version-mib", "0")
    assert proc.returncode == 2 and "--max-version-mib" in proc.stderr


@pytest.mark.parametrize("where", ["s3", "local"])
def test_an_object_swapped_for_a_bigger_one_after_listing_is_cut_off_at_its_size(
        tmp_path, models_uri, monkeypatch, where):
    """Issue 27: the download was not capped at the declared size, so an object replaced
    after the listing (here by 80 MiB, past the multipart threshold) landed whole in the
    serving volume. Now the transfer stops at the first chunk past the listed size."""
    from contract.storage import MULTIPART_THRESHOLD, LocalLocation

    root = models_uri if where == "s3" else str(tmp_path / "store")
    publish_fake(tmp_path, root, "m", 1)
    kind = S3Location if where == "s3" else LocalLocation
    real_download = kind.download_file
    big = MULTIPART_THRESHOLD + (16 << 20)
    peak = []

    def swap_then_download(self, path, local, progress=None, size=None):
        if path.startswith("variables/variables.data") and not peak:
            swapped = tmp_path / "swapped"
            with swapped.open("wb") as f:
                f.truncate(big)  # 80 MiB of zeros, cheap to make
            self.upload_file(path, swapped, None)
            try:
                return real_download(self, path, local, progress, size)
            finally:
                peak.append(local.stat().st_blocks * 512 if local.exists() else 0)
        return real_download(self, path, local, progress, size)

    monkeypatch.setattr(kind, "download_file", swap_then_download)
    dest = tmp_path / "serve" / "m"
    result = Puller(f"{root}/m", dest, quiet=True).sync_once()
    assert result.local == [] and staging_left(dest) == []
    assert "has more than the 300000 bytes it was listed with (changed while it was " \
           "downloaded)" in result.rejected[1], result.rejected
    assert peak and peak[0] < big // 4, peak  # cut off early, not written whole


def test_junk_version_folders_cost_a_bounded_number_of_listings_per_sync(
        tmp_path, models_uri, monkeypatch):
    """Issue 27: every sync listed every numbered folder newer than the served one, so 1,000
    junk folders cost 2.1 s a sync. Now each is listed once, then at most
    MAX_RECHECKS_PER_SYNC of them a sync, and a real version still gets through."""
    from serving.puller import MAX_RECHECKS_PER_SYNC

    publish_fake(tmp_path, models_uri, "m", 1)
    junk = range(1000, 1100)  # above anything the trainer will publish in this test
    for v in junk:
        open_location(f"{models_uri}/m/{v}").write_bytes("x", b"junk")
    listed = []
    real_list = S3Location.list_files
    monkeypatch.setattr(S3Location, "list_files",
                        lambda self: listed.append(self.uri.rsplit("/", 1)[1]) or
                        real_list(self))
    puller = Puller(f"{models_uri}/m", tmp_path / "serve" / "m", keep=2, quiet=True)

    def sync() -> tuple[list, set]:
        listed.clear()
        result = puller.sync_once()
        return result.local, {int(v) for v in listed if v.isdigit()}

    local, seen = sync()
    assert local == [1] and set(junk) <= seen  # every folder looked at once
    local, seen = sync()
    assert local == [1] and len(seen & set(junk)) == MAX_RECHECKS_PER_SYNC
    # A new version is looked at at once, junk or not.
    publish_fake(tmp_path, models_uri, "m", 500)
    local, seen = sync()
    assert local == [1, 500] and 500 in seen
    # A version seen half-uploaded (no manifest yet) is looked at again before old junk.
    folder, files, manifest = make_version(tmp_path, "m", 600)
    remote = open_location(f"{models_uri}/m/600")
    for f in files:
        remote.upload_file(f.path, folder / f.path, None)
    local, seen = sync()
    assert local == [1, 500] and 600 in seen
    remote.write_bytes(MANIFEST_FILE, (json.dumps(manifest) + "\n").encode())
    local, seen = sync()
    assert local == [500, 600] and len(seen & set(junk)) < MAX_RECHECKS_PER_SYNC


def test_a_dest_the_puller_cannot_write_is_one_line_and_a_retry_not_a_crash(
        tmp_path, models_uri):
    """Issue 29: a Docker volume created owned by root made the puller (UID 10001) fail its
    mkdir with PermissionError, which watch() did not catch: a crash loop. (Tests run as
    root here, so a file where the folder should be stands in for the refused mkdir.)"""
    publish_fake(tmp_path, models_uri, "m", 1)
    (tmp_path / "volume").write_text("not a folder")
    dest = tmp_path / "volume" / "m"
    once = run_cli("serving", "pull", "--source", f"{models_uri}/m", "--dest", str(dest))
    assert once.returncode == 3 and "Traceback" not in once.stderr
    assert f"cannot write --dest {dest}: Not a directory" in once.stderr
    log = (tmp_path / "watch.log").open("w+")
    watch = subprocess.Popen([sys.executable, "-m", "serving", "pull", "--source",
                              f"{models_uri}/m", "--dest", str(dest), "--watch", "--interval",
                              "0.2"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                             env=os.environ.copy())
    try:
        wait_for(lambda: read(log).count("sync failed (local folder: Not a directory") >= 2)
        assert watch.poll() is None  # still running, retrying
    finally:
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(30) == 0
    assert "Traceback" not in read(log)


def test_least_privilege_aws_policy_trainer_preflight_publish_and_pull(
        tmp_path, seaweed, models_uri, monkeypatch):
    """Issue 29: under the README's bucket policy (ListBucket only under the project's
    prefixes) AWS refuses HeadBucket, and answers 403 for a missing key. The preflight's
    HeadBucket stopped every training run with exit 3, and a missing labels object or
    manifest read as an outage. Existence is now asked with a LIST under the key. The store
    is the real SeaweedFS behind aws_policy_proxy, which gives AWS's three answers."""
    from contract.storage import s3_client
    from tests.integration.aws_policy_proxy import AwsPolicyProxy
    from trainer.config import TrainConfig
    from trainer.preflight import preflight

    bucket, prefix = models_uri.removeprefix("s3://").split("/", 1)
    data = f"s3://{DATA_BUCKET}/{unique('policy')}"
    open_location(data).write_bytes("a/x.png", b"x")
    grants = [f"{prefix}/*", f"{data.split('/', 3)[3]}/*"]
    with AwsPolicyProxy(int(seaweed.endpoint.rsplit(":", 1)[1]), grants) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        s3_client.cache_clear()
        try:
            # The trainer's checks before any work: data listed, output and cache
            # writable, the version not yet published.
            preflight(TrainConfig(data=data, output=models_uri, model_name="m",
                                  cache=f"{models_uri}/cache", version=3, weights="none"))
            publish_fake(tmp_path, models_uri, "m", 3)
            # The puller: no labels object (a 403 here), a manifest read, the install.
            dest = tmp_path / "serve" / "m"
            result = Puller(f"{models_uri}/m", dest, quiet=True).sync_once()
            assert result.installed == [3] and result.rejected == {}
            assert not open_location(f"{models_uri}/m").exists("_LABELS.json")
            with pytest.raises(FileNotFoundError):
                open_location(f"{models_uri}/m").read_bytes("_LABELS.json")
            # What AWS refused on the way, and was not needed.
            assert proxy.denied and all("HeadBucket" not in d for d in proxy.denied), \
                proxy.denied
            # Outside the granted prefixes it is still an access error, not "missing".
            with pytest.raises(UserError, match="access denied"):
                open_location(f"s3://{bucket}/elsewhere").exists("x")
        finally:
            s3_client.cache_clear()


def test_labels_never_pin_more_versions_than_the_volume_and_server_are_sized_for(
        tmp_path, models_uri, caplog):
    """Issue 29: with labels, --keep does not apply: each label's version and its rollback
    target. A second label (canary) made four VGG16 versions, 2.2 GB plus a download in the
    3Gi volume, and four loaded in a 4Gi server. Now at most --max-versions (3): every
    labelled version, then rollback targets newest first."""
    from contract.labels import Labels
    from contract.names import LABELS_OBJECT

    for v in (1, 2, 3, 4):
        publish_fake(tmp_path, models_uri, "m", v)
    open_location(f"{models_uri}/m").write_bytes(LABELS_OBJECT, Labels(
        "m", {"stable": 3, "canary": 4}, {"stable": [2], "canary": [1]}).to_bytes())
    config = tmp_path / "models.config"
    with caplog.at_level("WARNING", logger="serving.puller"):
        result = Puller(f"{models_uri}/m", tmp_path / "serve" / "m", quiet=True,
                        model_config=config).sync_once()
    assert result.local == [2, 3, 4]  # canary's rollback target 1 is the one left out
    assert "not keeping rollback target(s) [1]: the labels pin 4 versions, more than " \
           "--max-versions 3" in caplog.text
    roomy = Puller(f"{models_uri}/m", tmp_path / "roomy" / "m", quiet=True,
                   model_config=tmp_path / "roomy.config", max_versions=4).sync_once()
    assert roomy.local == [1, 2, 3, 4]


def test_the_sidecar_exports_what_an_operator_alerts_on(tmp_path, models_uri):
    """Issue 29: monitoring was on, but the puller said nothing a scraper could read. With
    --metrics-port it exports syncs, installs, rejections by kind, the last successful sync
    and the newest published and local versions (k8s/components/monitoring alerts on them)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tools.seaweed import free_port

    publish_fake(tmp_path, models_uri, "m", 1)
    folder = publish_fake(tmp_path, models_uri, "m", 2)
    open_location(f"{models_uri}/m/2").write_bytes(  # same size, other bytes: refused
        "saved_model.pb", (folder / "saved_model.pb").read_bytes()[:-1] + b"X")
    port = free_port()
    log = (tmp_path / "watch.log").open("w+")
    watch = subprocess.Popen([sys.executable, "-m", "serving", "pull", "--source",
                              f"{models_uri}/m", "--dest", str(tmp_path / "serve" / "m"),
                              "--watch", "--interval", "0.3", "--metrics-port", str(port)],
                             stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                             env=os.environ.copy())

    def scrape() -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    try:
        wait_for(lambda: scrape().get(("vgg16_puller_syncs_total",
                                       (("model", "m"), ("outcome", "ok"))), 0) >= 2)
        got = scrape()
    finally:
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(30) == 0
    m = (("model", "m"),)
    assert got[("vgg16_puller_installs_total", m)] == 1
    assert got[("vgg16_puller_rejections_total", (("kind", "checksum"), ("model", "m")))] == 1
    assert got[("vgg16_puller_newest_published_version", m)] == 2
    assert got[("vgg16_puller_newest_local_version", m)] == 1
    assert got[("vgg16_puller_local_versions", m)] == 1
    assert time.time() - got[("vgg16_puller_last_successful_sync_timestamp_seconds", m)] < 60
