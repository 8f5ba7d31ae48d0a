import pytest

from crossmodal.errors import CrossmodalError
from crossmodal.store import Condition, parse_filter


def test_grammar():
    conditions = parse_filter('{"tags": ["cat", "dog"], "kind": "image", "width": {"gte": 10}, "metadata.a": 3}')
    assert conditions == [
        Condition("tags", "any", ["cat", "dog"]),
        Condition("kind", "eq", "image"),
        Condition("width", "range", {"gte": 10}),
        Condition("metadata.a", "eq", 3),
    ]
    assert parse_filter("") == [] and parse_filter(None) == []


@pytest.mark.parametrize(
    "raw, needle",
    [
        ("{oops", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"bad key!": 1}', "not a valid name"),
        ('{"tags": []}', "non-empty list"),
        ('{"tags": ["a", 1]}', "non-empty list"),
        ('{"width": {"near": 3}}', "gt, gte, lt, lte"),
        ('{"width": {"gte": "x"}}', "must be numbers"),
        ('{"width": 1.5}', "not float"),
    ],
)
def test_malformed_filters_name_the_parameter(raw, needle):
    with pytest.raises(CrossmodalError) as info:
        parse_filter(raw)
    assert str(info.value).startswith("filter:") and needle in str(info.value)
