"""Character tags of Python source follow the rules of the module docstring."""

import keyword

import numpy as np
import pytest

from statewise.errors import DataError
from statewise.tasks.code_tagging import (
    CATEGORIES,
    SPLIT_MODULES,
    UNKNOWN,
    encode_characters,
    module_source,
    tag_source,
    tagged_split,
)


def test_hand_example():
    text = "def f(x):  # hi\n    return x + 0x1F * 'a'\n"
    got = [CATEGORIES[t] for t in tag_source(text)]
    want = (
        ["keyword"] * 3 + ["whitespace"] + ["name"] + ["operator"] + ["name"]
        + ["operator"] * 2 + ["whitespace"] * 2 + ["comment"] * 4 + ["whitespace"] * 5
        + ["keyword"] * 6 + ["whitespace"] + ["name"] + ["whitespace"] + ["operator"]
        + ["whitespace"] + ["number"] * 4 + ["whitespace"] + ["operator"] + ["whitespace"]
        + ["string"] * 3 + ["whitespace"]
    )  # fmt: skip
    assert got == want


def test_multiline_strings_continuations_and_soft_keywords():
    text = 'x = """a\nb"""\ny = 1 + \\\n    2\nmatch = None\n'
    tags = [CATEGORIES[t] for t in tag_source(text)]
    start = text.index('"""')
    assert set(tags[start : text.index("\ny")]) == {"string"}
    assert tags[text.index("\\")] == "whitespace"
    assert tags[text.index("match")] == "name" and tags[text.index("None")] == "keyword"


@pytest.mark.parametrize("split", list(SPLIT_MODULES))
def test_standard_library_tags_obey_the_rules(split):
    """On real files: a name/keyword run is an identifier, and iskeyword decides which."""
    name = SPLIT_MODULES[split][0]
    text = module_source(name)
    tags = np.array(tag_source(text))
    assert len(tags) == len(text)
    runs = np.flatnonzero(np.diff(tags, prepend=-1, append=-1))
    for a, b in zip(runs[:-1], runs[1:]):
        word, category = text[a:b], CATEGORIES[tags[a]]
        if category in ("name", "keyword"):
            assert word.isidentifier() or category == "name"
            if word.isidentifier():
                assert keyword.iskeyword(word) == (category == "keyword"), word
        elif category == "whitespace":
            assert word.strip() in ("", "\\"), repr(word)
        elif category == "comment":
            assert word.startswith("#")
    assert {CATEGORIES[t] for t in tags} >= {"name", "keyword", "operator", "string"}


def test_splits_are_disjoint_and_characters_encode():
    seen = [set(v) for v in SPLIT_MODULES.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert encode_characters("a\u00e9")[1] == UNKNOWN
    data = tagged_split("val")
    x, y = data.windows(32, 4, seed=0)
    assert x.shape == y.shape == (4, 32)
    with pytest.raises(DataError, match="split"):
        tagged_split("dev")
    with pytest.raises(DataError, match="does not tokenize"):
        tag_source("x = (\n")
