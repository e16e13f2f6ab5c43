"""Nova's extra-spec operators: how a flavor's "capabilities:*" value is matched.

"s== x", "s!= x", "s>= x", "s> x", "s<= x", "s< x"   string comparison
"== n", "!= n", ">= n", "<= n", "> n", "< n"           numeric comparison
"<in> x"                                             x is a substring
"<or> a <or> b"                                      equal to any of them
anything else                                        plain string equality
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def matches(value: Any, requirement: str) -> bool:
    """Whether a host's `value` satisfies one extra-spec `requirement`."""
    text = str(value)
    words = requirement.split()
    if not words:
        return text == requirement
    op = words[0]
    rest = requirement[len(op) :].strip()
    if op == "<in>":
        return rest in text
    if op == "<or>":
        return text in [w.strip() for w in rest.split("<or>")]
    if op.startswith("s") and op[1:] in _OPS:
        return _OPS[op[1:]](text, rest)
    if op in _OPS:
        try:
            return _OPS[op](float(text), float(rest))
        except ValueError:
            return False
    return text == requirement
