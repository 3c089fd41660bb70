"""TF Serving's own model-server tests, run against `serving local` (issue 28).

`tensorflow_serving/model_servers/tensorflow_model_server_test.py` starts
`$TEST_SRCDIR/tf_serving/tensorflow_serving/model_servers/tensorflow_model_server` with TF
Serving's flags and talks to it over gRPC, REST and a Unix socket, using the SavedModels
under `servables/tensorflow/testdata`. This tool lays out that tree from a clone of
tensorflow/serving at a tag, puts a stand-in `tensorflow_model_server` there that runs
`python -m serving local` with the same arguments, and runs the test file with this
project's Python. Nothing of TF Serving is copied into the project: the files are read
from the clone given, into a temporary folder.

    python -m tools.tfserving_suite --serving-repo PATH [--ref 2.20.0] [TEST ...]

PATH is a git clone of github.com/tensorflow/serving (a bare one will do). TEST names
tests as unittest does (`TensorflowModelServerTest.testRegress`); none: all of them. The
test file's extra imports (portpicker, six, and tf_keras for its Keras tests) are installed
from requirements/tfserving-suite.lock, with hashes, into the temporary folder. Needs network
access to PyPI once; the tests themselves run offline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "tfserving-suite.lock"
TEST_FILE = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
NEEDED = ("tensorflow_serving/model_servers/tensorflow_model_server_test.py",
          "tensorflow_serving/model_servers/test_util",
          "tensorflow_serving/servables/tensorflow/testdata")
STAND_IN = """#!/bin/sh
# tensorflow_model_server, as this project's development server (tools/tfserving_suite.py)
PYTHONPATH={repo} exec {python} -m serving local "$@"
"""


def extract(serving_repo: Path, ref: str, into: Path) -> list[str]:
    """The test file, its base class and the testdata at `ref`, under into/tensorflow_serving.
    Returns the files the clone could not give (a partial clone may lack large testdata:
    the TF Lite and tf.text models); the tests that need them fail, and say so."""
    git = ["git", "-C", str(serving_repo)]
    listing = subprocess.run([*git, "ls-tree", "-r", "-z", ref, "--", *NEEDED], check=True,
                             capture_output=True).stdout.decode()
    missing = []
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, kind, blob = meta.split()
        if kind != "blob":
            continue
        data = subprocess.run([*git, "cat-file", "blob", blob], capture_output=True)
        if data.returncode != 0:
            missing.append(path)
            continue
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.stdout)
        if mode == "100755":
            target.chmod(0o755)
    return missing


def package_root(srcdir: Path, into: Path) -> None:
    """One `tensorflow_serving` package holding the installed API stubs (tensorflow-serving-
    api: apis, config, ...) and the test base class (`model_servers.test_util`), which the
    installed package does not have."""
    import tensorflow_serving

    package = into / "tensorflow_serving"
    shutil.copytree(Path(tensorflow_serving.__file__).parent, package)
    shutil.copytree(srcdir / "tensorflow_serving" / "model_servers" / "test_util",
                    package / "model_servers" / "test_util", dirs_exist_ok=True)
    for folder in (package, package / "model_servers", package / "model_servers" / "test_util"):
        (folder / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serving-repo", required=True, type=Path,
                        help="a git clone of github.com/tensorflow/serving")
    parser.add_argument("--ref", default="2.20.0", help="the tag or commit to test against")
    parser.add_argument("tests", nargs="*", help="unittest names; none: every test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfserving-suite-") as tmp:
        work = Path(tmp)
        srcdir = work / "srcdir" / "tf_serving"
        for path in extract(args.serving_repo, args.ref, srcdir):
            print(f"not in the clone: {path}", file=sys.stderr)
        binary = srcdir / "tensorflow_serving" / "model_servers" / "tensorflow_model_server"
        binary.write_text(STAND_IN.format(repo=REPO, python=sys.executable))
        binary.chmod(0o755)
        packages = work / "packages"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--require-hashes",
                        "--no-deps", "--target", str(packages), "-r", str(LOCK)], check=True)
        package_root(srcdir, work / "overlay")
        # tf.keras as Keras 2 (tf_keras), as in TF Serving's CI: its Keras tests export
        # models whose input is named by Keras 2's rules.
        env = {**os.environ, "TEST_SRCDIR": str(work / "srcdir"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_USE_LEGACY_KERAS": "1",
               "PYTHONPATH": os.pathsep.join([str(work / "overlay"), str(packages)])}
        return subprocess.run([sys.executable, str(srcdir / TEST_FILE), *args.tests],
                              env=env, cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
