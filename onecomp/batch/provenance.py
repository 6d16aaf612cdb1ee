"""Where each setting of an expanded job was written in the batch YAML.

A job is the merge of several YAML fragments (``defaults``, a ``jobs`` entry,
or a model, method, budget and stage list of the matrix). Each fragment maps
every leaf it sets to its YAML location; merging keeps, for every leaf of the
result, the location of the fragment that won. A validation error at a job key
is then reported where the user can fix it, e.g. ``matrix.budgets[1].bits``
rather than ``quant.bits`` of some job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from onecomp.config import merge

Key = tuple[Any, ...]


def render(root: str, key: Sequence[Any]) -> str:
    """``root`` followed by mapping keys (``.k``) and list indices (``[i]``)."""
    out = root
    for part in key:
        out += f"[{part}]" if isinstance(part, int) and not isinstance(part, bool) else (f".{part}" if out else str(part))
    return out


def leaves(data: dict[str, Any], prefix: Key = ()) -> list[Key]:
    """Every leaf key of a nested mapping; lists and empty mappings are leaves."""
    out: list[Key] = []
    for k, v in data.items():
        key = (*prefix, k)
        if isinstance(v, dict) and v:
            out.extend(leaves(v, key))
        else:
            out.append(key)
    return out


def _get(data: Any, key: Key) -> Any:
    for part in key:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


@dataclass
class Fragment:
    """A partial job mapping and the YAML location of each of its leaves."""

    data: dict[str, Any]
    where: dict[Key, str] = field(default_factory=dict)

    @classmethod
    def at(cls, data: dict[str, Any], root: str) -> "Fragment":
        """A fragment written as a mapping at YAML location ``root``."""
        return cls(data, {k: render(root, k) for k in leaves(data)})


def combine(fragments: Iterable[Fragment]) -> tuple[dict[str, Any], dict[Key, str]]:
    """Merge fragments in order (later wins, as :func:`onecomp.config.merge`), tracking each leaf's location."""
    data: dict[str, Any] = {}
    where: dict[Key, str] = {}
    for frag in fragments:
        for key, loc in frag.where.items():
            value, current = _get(frag.data, key), _get(data, key)
            if isinstance(value, dict) and isinstance(current, dict):  # an empty mapping merges into the old one
                if not any(k[: len(key)] == key and k != key for k in where):
                    where[key] = loc
                continue
            for old in [k for k in where if k[: len(key)] == key or key[: len(k)] == k]:
                del where[old]
            where[key] = loc
        data = merge(data, frag.data)
    return data, where


def locate(loc: Key, where: dict[Key, str], fallback: str) -> str:
    """The YAML location of the value at job key ``loc``.

    The longest written prefix wins (a list written whole, then its item);
    a key above the written leaves (an error about a whole section) names every
    location under it; a key nothing wrote (a required field left out) is
    named under ``fallback``, the job's own location.
    """
    for n in range(len(loc), 0, -1):
        if loc[:n] in where:
            return render(where[loc[:n]], loc[n:])
    if loc:
        under = list(dict.fromkeys(w for k, w in where.items() if k[: len(loc)] == loc))
        if under:
            return " and ".join(under)
    return render(fallback, loc)
