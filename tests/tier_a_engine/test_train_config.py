"""The headless trainer's config file and --set overrides (cli/train.py load_config): no ComfyUI needed."""
from __future__ import annotations

import json
from argparse import Namespace

import pytest

from partid.cli import train
from partid.cli.client import EXIT_USAGE
from partid.models.errors import InputError


def test_set_overrides_parse_json_values_and_keep_plain_strings(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"steps": 10, "folder": "a"}))
    config = train.load_config(str(path), ["steps=200", "paired=true", "train=[\"id_kv\"]", "folder=my images",
                                           "caption=a=b"])
    assert config == {"steps": 200, "paired": True, "train": ["id_kv"], "folder": "my images", "caption": "a=b"}


@pytest.mark.parametrize("content, sets, input_name, words", [
    ("{\"steps\": 10}", ["steps"], "--set", "is not KEY=VALUE"),          # was: silently set steps to ""
    ("{\"steps\": 10}", ["=5"], "--set", "is not KEY=VALUE"),
    ("{\"steps\": 10,}", [], "--config", "is not valid JSON"),             # was: a JSONDecodeError traceback
    ("[1, 2]", [], "--config", "not a JSON object"),
    (None, [], "--config", "cannot read"),
])
def test_a_bad_config_or_set_names_the_option_and_the_fix(tmp_path, content, sets, input_name, words):
    path = tmp_path / "train.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as err:
        train.load_config(str(path), sets)
    assert err.value.input_name == input_name and words in str(err.value) and "Fix:" in str(err.value)


def test_the_command_exits_with_usage_on_a_bad_config_file(tmp_path, caplog):
    path = tmp_path / "train.json"
    path.write_text("{not json")
    with caplog.at_level("ERROR", logger="partid.cli.train"):
        assert train.main(Namespace(config=str(path), sets=[])) == EXIT_USAGE
    assert "is not valid JSON" in caplog.text
