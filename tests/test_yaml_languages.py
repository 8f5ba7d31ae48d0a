"""Every user-facing text in the plugin's YAML files comes in the four languages Dify shows."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = {"en_US", "zh_Hans", "ja_JP", "pt_BR"}
YAML_FILES = sorted([ROOT / "manifest.yaml", *ROOT.glob("provider/*.yaml"), *ROOT.glob("tools/*.yaml"),
                     *ROOT.glob("endpoints/*.yaml"), *ROOT.glob("model_provider/**/*.yaml")])


def _localised_texts(node, path=""):
    """(path, dict) for every mapping that holds en_US: a localised text."""
    if isinstance(node, dict):
        if "en_US" in node:
            yield path, node
            return
        for key, value in node.items():
            yield from _localised_texts(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _localised_texts(value, f"{path}[{i}]")


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_text_has_all_four_languages(path):
    texts = list(_localised_texts(yaml.safe_load(path.read_text())))
    assert texts or path.parent.name == "endpoints", f"{path.name} has no localised text at all"
    for where, text in texts:
        missing = LANGUAGES - set(text)
        assert not missing, f"{path.name}{where} lacks {sorted(missing)}"
        assert all(str(text[lang]).strip() for lang in LANGUAGES), f"{path.name}{where} has an empty translation"


def test_tool_parameters_are_labelled():
    for path in ROOT.glob("tools/*.yaml"):
        for parameter in yaml.safe_load(path.read_text()).get("parameters", []):
            assert LANGUAGES <= set(parameter.get("label", {})), f"{path.name}: {parameter['name']} has no label"
            assert LANGUAGES <= set(parameter.get("human_description", {})), \
                f"{path.name}: {parameter['name']} has no human_description"
