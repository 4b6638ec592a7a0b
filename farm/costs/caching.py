"""Where prompt caching's breakpoints go in a Messages API body. Pure: no I/O.

The API caches a prefix (tools → system → messages) up to a block carrying
``cache_control``, at most 4 such breakpoints a request, and caches nothing (silently) when
the prefix is shorter than the model's minimum cacheable length. Those minimums are data
(``farm/costs/cache_minimums.csv``, beside the prices, read once); a model not in the table
(nor its dated snapshot's base) gets the largest minimum of the table.

The stable segments of a farm request are its tools (the breakpoint goes on the last tool),
its system prompt, and its documents (each a text block of the user turn before the
prompt, ``JobRequest.documents``). A segment's end is a candidate when the prefix up to it
(farm.costs.tokens: characters / 4 plus framing) reaches the minimum. Of the candidates, at
most 4 get a breakpoint, chosen in this order: the last one (the longest prefix), the ends of
the tools and of the system prompt (each can be shared by requests whose later parts
differ), then the other documents' ends, latest first. The prompt itself, the last block of
the last message, is never a breakpoint, nor is an empty text block. A body that carries a
``cache_control`` of its own (a tool marked by the caller, a top-level automatic one) is
left to it: no breakpoint is planned.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

from farm.costs.tokens import (
    MESSAGE_FRAMING,
    REQUEST_FRAMING,
    block_tokens,
    json_tokens,
    text_tokens,
)

CacheSetting = Literal["off", "5m", "1h"]
Section = Literal["tools", "system", "messages"]
MAX_BREAKPOINTS = 4
COLUMNS: tuple[str, ...] = ("model", "min_cacheable_tokens", "source", "as_of")
_SNAPSHOT_RE = re.compile(r"(?P<base>.+)-[0-9]{8}")


def resolve_ttl(request: CacheSetting | None, queue: CacheSetting | None,
                default: CacheSetting) -> CacheSetting:
    """A call's prompt-cache TTL: the job's own ``cache``, else its queue's
    ``prompt_cache``, else the farm's FARM_PROMPT_CACHE."""
    if request is not None:
        return request
    return queue if queue is not None else default


def parse_minimums(text: str, origin: str) -> Mapping[str, int]:
    """model -> minimum cacheable tokens, from the CSV text; a ValueError names the line and
    the column at fault."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    found: dict[str, int] = {}
    try:
        header = tuple(reader.fieldnames or ())
        if header != COLUMNS:
            raise ValueError(f"{origin}: header must be {','.join(COLUMNS)}; "
                             f"got {','.join(header) or '(empty)'}")
        for row in reader:
            where = f"{origin}: line {reader.line_num}"
            if None in row or any(row[c] is None for c in COLUMNS):
                raise ValueError(f"{where}: expected {len(COLUMNS)} fields")
            cells = {c: row[c].strip() for c in COLUMNS}
            for column in COLUMNS:
                if not cells[column]:
                    raise ValueError(f"{where}, column {column!r}: empty")
            model, tokens = cells["model"], cells["min_cacheable_tokens"]
            if model in found:
                raise ValueError(f"{where}, column 'model': duplicate model {model!r}")
            if not tokens.isdigit() or int(tokens) < 1:
                raise ValueError(f"{where}, column 'min_cacheable_tokens': {tokens!r} is not "
                                 "a whole number of tokens >= 1")
            found[model] = int(tokens)
    except csv.Error as exc:
        raise ValueError(f"{origin}: malformed CSV after line {reader.line_num}: {exc}") from exc
    if not found:
        raise ValueError(f"{origin}: no rows")
    return MappingProxyType(found)


@functools.cache
def minimums() -> Mapping[str, int]:
    """The packaged table of minimum cacheable lengths, read once per process."""
    packaged = resources.files("farm.costs").joinpath("cache_minimums.csv")
    return parse_minimums(packaged.read_text(encoding="utf-8-sig"),
                          "farm/costs/cache_minimums.csv")


def min_cacheable_tokens(model: str, table: Mapping[str, int] | None = None) -> int:
    """The minimum cacheable prefix of ``model``: its row, its dated snapshot's base row
    (``…-YYYYMMDD``), else the largest minimum of the table."""
    table = minimums() if table is None else table
    found = table.get(model)
    if found is None and (match := _SNAPSHOT_RE.fullmatch(model)):
        found = table.get(match["base"])
    return max(table.values()) if found is None else found


@dataclass(frozen=True)
class Breakpoint:
    """A block to carry cache_control: ``tools[index]``, ``system[index]`` (a system string
    is block 0), or ``messages[index].content[block]``; the prefix it ends, in tokens."""

    section: Section
    index: int
    block: int | None
    prefix_tokens: int


@dataclass(frozen=True)
class Plan:
    """The breakpoints of one body (in body order), the TTL and minimum they were planned
    for, and why there are none when there are none."""

    breakpoints: tuple[Breakpoint, ...]
    ttl: CacheSetting
    minimum: int
    note: str = ""

    @property
    def cached_tokens(self) -> int:
        """The tokens of the longest prefix marked: at most this many are written."""
        return self.breakpoints[-1].prefix_tokens if self.breakpoints else 0


@dataclass(frozen=True)
class _Segment:
    spot: tuple[Section, int, int | None]
    tokens: int
    markable: bool


def marks_its_own(body: Mapping[str, Any]) -> bool:
    """Whether the body carries a cache_control already (top level, a tool, a system or a
    message block)."""
    if "cache_control" in body:
        return True
    system = body.get("system")
    blocks: list[Any] = [*(body.get("tools") or ()),
                         *(system if isinstance(system, list) else ())]
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks += content
    return any(isinstance(b, dict) and "cache_control" in b for b in blocks)


def _segments(body: Mapping[str, Any]) -> list[_Segment]:
    """Every piece of the body's prefix in cache order, and whether it may end one."""
    segments: list[_Segment] = []
    tools = list(body.get("tools") or ())
    for i, tool in enumerate(tools):
        segments.append(_Segment(("tools", i, None), json_tokens(tool), i == len(tools) - 1))
    system = body.get("system")
    if isinstance(system, str) and system:
        segments.append(_Segment(("system", 0, None), text_tokens(system), True))
    elif isinstance(system, list):
        for j, block in enumerate(system):
            segments.append(_Segment(("system", j, None), block_tokens(block),
                                     j == len(system) - 1))
    messages = list(body.get("messages") or ())
    for m, message in enumerate(messages):
        segments.append(_Segment(("messages", m, None), MESSAGE_FRAMING, False))
        content = message.get("content")
        if not isinstance(content, list):
            segments.append(_Segment(("messages", m, None), block_tokens(content or ""), False))
            continue
        for k, block in enumerate(content):
            prompt = m == len(messages) - 1 and k == len(content) - 1
            segments.append(_Segment(("messages", m, k), block_tokens(block), not prompt))
    return [s if s.tokens > 0 else _Segment(s.spot, 0, False) for s in segments]


def plan_breakpoints(body: Mapping[str, Any], model: str, ttl: CacheSetting,
                     table: Mapping[str, int] | None = None) -> Plan:
    """Where ``body``'s breakpoints go on ``model`` for ``ttl`` (see the module doc)."""
    minimum = min_cacheable_tokens(model, table)
    if ttl == "off":
        return Plan((), ttl, minimum, "prompt caching is off")
    if marks_its_own(body):
        return Plan((), ttl, minimum, "the request places its own cache_control")
    segments = _segments(body)
    prefix, total = [], REQUEST_FRAMING
    for segment in segments:
        total += segment.tokens
        prefix.append(total)
    eligible = [i for i, s in enumerate(segments) if s.markable and prefix[i] >= minimum]
    if not eligible:
        longest = max((prefix[i] for i, s in enumerate(segments) if s.markable), default=0)
        return Plan((), ttl, minimum, f"the stable prefix (~{longest:,} tokens) is under "
                                      f"{model}'s minimum of {minimum:,}")
    heads = [i for i in eligible if segments[i].spot[0] != "messages"]
    ranked = [eligible[-1], *heads, *reversed(eligible)]
    chosen = sorted(list(dict.fromkeys(ranked))[:MAX_BREAKPOINTS])
    return Plan(tuple(Breakpoint(*segments[i].spot, prefix_tokens=prefix[i]) for i in chosen),
                ttl, minimum)
