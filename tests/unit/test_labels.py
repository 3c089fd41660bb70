"""Version labels (contract.labels) and the models.config the puller derives from them
(serving.server_config), checked against TF Serving's own ModelServerConfig proto."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from contract.labels import MAX_HISTORY, Labels, LabelsError, parse_labels
from serving.server_config import Served, next_step, read_state, render, write_atomically


def test_moving_a_label_remembers_where_it_was_and_rollback_goes_back():
    labels = Labels("m", {"stable": 3}).moved({"stable": 5, "canary": 6})
    assert labels.labels == {"stable": 5, "canary": 6} and labels.history == {"stable": [3]}
    labels = labels.moved({"stable": 7})
    assert labels.history == {"stable": [5, 3]} and labels.previous("stable") == 5
    assert labels.pinned() == {7, 6, 5}  # served now, or next after a rollback
    back = labels.rolled_back("stable")
    assert back.labels["stable"] == 5 and back.history == {"stable": [3]}
    assert parse_labels(back.to_bytes(), "m") == back  # what is written reads back the same
    with pytest.raises(LabelsError, match="no previous version to roll back to"):
        labels.rolled_back("canary")
    assert Labels("m", {"stable": 7}).moved({"stable": 7}).history == {}  # not a move
    many = Labels("m", {"stable": 1})
    for version in range(2, 30):
        many = many.moved({"stable": version})
    assert len(many.history["stable"]) == MAX_HISTORY
    assert parse_labels(many.to_bytes(), "m") == many


@pytest.mark.parametrize("history", [
    {"canary": [1]},  # a label not in use
    {"stable": "3"},
    {"stable": [0]},
    {"stable": list(range(1, MAX_HISTORY + 2))},
])
def test_a_broken_history_is_refused(history):
    data = json.dumps({"format": 1, "model_name": "m", "labels": {"stable": 4},
                       "history": history}).encode()
    with pytest.raises(LabelsError):
        parse_labels(data, "m")


def parsed(text: str):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_the_written_config_is_tf_servings_model_server_config():
    text = render("m", "/models/m", Served((3, 5), {"stable": 5, "canary": 3}))
    [model] = parsed(text).model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("m", "/models/m",
                                                                   "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [3, 5]
    assert dict(model.version_labels) == {"stable": 5, "canary": 3}
    [latest] = parsed(render("m", "/models/m", Served(None))).model_config_list.config
    assert latest.model_version_policy.latest.num_versions == 1
    assert not latest.version_labels


def test_a_label_in_use_moves_to_a_new_version_in_two_writes():
    """TF Serving refuses a label in use on a version it has not loaded (server_core.cc):
    the version joins first, the label follows on a later sync."""
    live = Served((1,), {"stable": 1})
    desired = Served((2,), {"stable": 2})
    first = next_step(live, desired)
    assert first == Served((1, 2), {"stable": 1})
    assert next_step(first, desired) == desired
    # A version the server already has (a rollback's target): one write.
    both = Served((1, 2), {"stable": 2})
    assert next_step(both, Served((1, 2), {"stable": 1})) == Served((1, 2), {"stable": 1})
    # New labels may name a version not loaded yet (--allow_version_labels_for_unavailable_
    # models), as at a fresh start.
    assert next_step(None, desired) == desired
    assert next_step(live, Served((1, 2), {"stable": 1, "canary": 2})) == \
        Served((1, 2), {"stable": 1, "canary": 2})


def test_the_state_line_reads_back_and_foreign_files_have_none(tmp_path):
    path = tmp_path / "models.config"
    served = Served((4, 9), {"stable": 9})
    write_atomically(path, render("m", "/models/m", served))
    assert read_state(path) == served
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]
    path.write_text("model_config_list {}\n")
    assert read_state(path) is None
    assert read_state(tmp_path / "absent") is None
