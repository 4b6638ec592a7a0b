"""The README's routing table: the shipped model per family on the frozen test split, and
on the independent sets (per writer and together), with the share sent to each model.

    .venv/bin/python ops/router/figures.py
"""

from __future__ import annotations

import json
from pathlib import Path

from farm.routing import train
from farm.routing.model import load

DATA = Path(__file__).resolve().parents[2] / "farm" / "routing" / "data"


def line(name: str, f: train.Figures) -> str:
    return (f"| {name} | {f.n} | {f.accuracy:.1%} | {f.complex_recall:.1%} | "
            f"{1 - f.complex_share:.1%} / {f.complex_share:.1%} |")


def main() -> None:
    model = load()
    rows = [json.loads(x) for x in (DATA / "labelled.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    independent = [json.loads(x) for x in (DATA / "independent.jsonl").read_text().splitlines()]
    print(f"threshold {model.threshold:.3f}\n")
    print("| jobs | n | accuracy | complex recall | to simple / complex model |")
    print("|---|---|---|---|---|")
    for family, figures in train.by_family(model, test).items():
        print(line(f"test: {family}", figures))
    print(line("**test split, all**", train.measure(model, test)))
    for writer in sorted({r["id"].split("-")[0] for r in independent}):
        mine = [r for r in independent if r["id"].startswith(f"{writer}-")]
        print(line(f"independent, writer {writer}", train.measure(model, mine)))
    print(line("**independent, all**", train.measure(model, independent)))


if __name__ == "__main__":
    main()
