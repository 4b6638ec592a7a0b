"""`farm router train|calibrate|report|feedback` and `farm route`: the learned router's model
(farm.routing.model) from the labelled data (farm/routing/data): train it on the train split
(and the user's feedback), set its threshold on the dev split, measure it per family, and
show where jobs would go without enqueuing them."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from farm.cli.context import farm_client, settings_of
from farm.routing import feedback as labels
from farm.routing import train as training
from farm.routing.model import MODEL_PATH, Model, load

DATA = Path(__file__).resolve().parents[1] / "routing" / "data"


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None


@click.group()
def router() -> None:
    """The learned complexity router: train, calibrate, report."""


@router.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=DATA / "labelled.jsonl")
@click.option("--out", type=click.Path(path_type=Path), default=MODEL_PATH)
@click.option("--feedback", "with_feedback", is_flag=True,
              help="Add the labels of `farm router feedback` (from Postgres) to the train split.")
@click.option("--l2", type=float, default=3e-3, show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.pass_context
def train(ctx: click.Context, data: Path, out: Path, with_feedback: bool, l2: float,
          epochs: int) -> None:
    """Train on the train split; the threshold starts at 0.5 (then run calibrate)."""
    rows = _rows(data)
    fit = [r for r in rows if r["split"] == "train"]
    added = _feedback(ctx) if with_feedback else []
    model = Model(training.train(fit + added, l2=l2, epochs=epochs), 0.5,
                  meta={"trained_on": len(fit), "feedback": len(added), "l2": l2,
                        "epochs": epochs})
    out.write_text(model.to_json())
    dev = training.measure(model, [r for r in rows if r["split"] == "dev"])
    click.echo(f"trained on {len(fit)} labelled jobs and {len(added)} from feedback -> {out}; "
               f"dev: accuracy {dev.accuracy:.1%}, complex recall {dev.complex_recall:.1%}")


def _feedback(ctx: click.Context) -> list[dict[str, Any]]:
    with farm_client(ctx) as farm:
        return labels.rows(farm.engine)


@router.command("calibrate")
@click.option("--recall", type=click.FloatRange(0, 1), default=None)
@click.option("--share", type=click.FloatRange(0, 1), default=None)
@click.option("--data", type=click.Path(path_type=Path), default=DATA / "labelled.jsonl")
@click.option("--model", "path", type=click.Path(path_type=Path), default=MODEL_PATH)
def calibrate(recall: float | None, share: float | None, data: Path, path: Path) -> None:
    """Set the threshold on the dev split for a complex recall or a complex share."""
    model = load(path)
    dev = [r for r in _rows(data) if r["split"] == "dev"]
    try:
        cut = training.calibrate(model, dev, recall=recall, share=share)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    target = {"recall_target": recall} if recall is not None else {"share_target": share}
    kept = {k: v for k, v in model.meta.items() if k not in ("recall_target", "share_target")}
    path.write_text(replace(model, threshold=cut, meta={**kept, **target}).to_json())
    got = training.measure(model, dev, cut)
    click.echo(f"threshold {cut:.3f}: dev accuracy {got.accuracy:.1%}, complex recall "
               f"{got.complex_recall:.1%}, {got.complex_share:.1%} of jobs to the complex model")


SPLITS = ("dev", "test", "independent")


@router.command("report")
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True,
              help="test: the frozen split; independent: prompts by a writer given only the "
                   "rubric (farm/routing/data/independent.jsonl).")
@click.option("--feedback", "with_feedback", is_flag=True,
              help="The router against the labels of `farm router feedback` instead.")
@click.option("--data", type=click.Path(path_type=Path), default=DATA / "labelled.jsonl")
@click.option("--model", "path", type=click.Path(path_type=Path), default=MODEL_PATH)
@click.option("--misroutes", type=click.IntRange(min=0), default=10, show_default=True,
              help="List up to this many misrouted jobs.")
@click.pass_context
def report(ctx: click.Context, split: str, with_feedback: bool, data: Path, path: Path,
           misroutes: int) -> None:
    """Accuracy, complex recall and the share sent to the complex model, per family, then
    the misroutes; the model's cost per job."""
    model = load(path)
    if with_feedback:
        rows = _feedback(ctx)
        split = "feedback"
    elif split == "independent":
        rows = _rows(DATA / "independent.jsonl")
    else:
        rows = [r for r in _rows(data) if r["split"] == split]
    if not rows:
        raise click.ClickException(f"no labelled jobs in {split}")
    click.echo(f"{split}: threshold {model.threshold:.3f}")
    click.echo(f"{'family':<24} {'jobs':>5} {'accuracy':>9} {'cx recall':>10} {'to complex':>11}")
    for family, f in {**training.by_family(model, rows),
                      "ALL": training.measure(model, rows)}.items():
        click.echo(f"{family:<24} {f.n:>5} {f.accuracy:>9.1%} {f.complex_recall:>10.1%} "
                   f"{f.complex_share:>11.1%}")
    if with_feedback:
        routed = [r for r in rows if r["routed"] != "auto"]
        right = sum(1 for r in routed if r["routed"] == r["label"])
        click.echo(f"as routed when submitted: {right}/{len(routed)} right (explicit choices "
                   "left out)")
    started = time.perf_counter()
    scored = [(training.score(model, r), r) for r in rows]
    per_job_ms = (time.perf_counter() - started) * 1000 / len(rows)
    wrong = [(s, r) for s, r in scored if (s >= model.threshold) != (r["label"] == "complex")]
    for s, r in wrong[:misroutes]:
        said = "complex" if s >= model.threshold else "simple"
        head = " ".join(str(r["prompt"]).split())[:70]
        click.echo(f"  misrouted {r['id']}: {said} (score {s:.2f}), labelled {r['label']}: "
                   f"{head}")
    click.echo(f"{len(wrong)} misrouted of {len(rows)}; scoring took {per_job_ms:.2f} ms/job")


@router.command("feedback")
@click.argument("job_id", type=click.UUID)
@click.argument("label", type=click.Choice(labels.LABELS))
@click.pass_context
def feedback(ctx: click.Context, job_id: uuid.UUID, label: str) -> None:
    """Label a job of your own traffic: the complexity it should have had."""
    with farm_client(ctx) as farm:
        try:
            labels.store(farm.engine, job_id, label)
        except labels.UnknownJob as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"job {job_id}: labelled {label} (see `farm router report --feedback`)")


@click.command("route")
@click.option("--prompt", default=None, help="One job's prompt.")
@click.option("--system", default=None)
@click.option("--file", "path", type=click.File("r"), default=None,
              help="Jobs as JSON lines (the Python API's fields), or - for stdin.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_cmd(ctx: click.Context, prompt: str | None, system: str | None, path: Any,
              as_json: bool) -> None:
    """Where each job would go (complexity, queue, model, reason) without enqueuing it."""
    from pydantic import ValidationError

    from farm.jobs import FieldError, describe_problems
    from farm.routing.route import parse_and_route

    if (prompt is None) == (path is None):
        raise click.UsageError("give --prompt or --file, one of them")
    settings = settings_of(ctx)
    raw = [json.dumps({"prompt": prompt, **({"system": system} if system else {})})
           ] if path is None else [line for line in path if line.strip()]
    for n, line in enumerate(raw, 1):
        try:
            job = json.loads(line)
            _, got = parse_and_route(job, settings.queues, settings.router_second_opinion)
        except (ValidationError, FieldError, ValueError) as exc:
            problem = (describe_problems(exc) if isinstance(exc, ValidationError)
                       else f"not JSON: {exc}" if isinstance(exc, json.JSONDecodeError)
                       else str(exc))
            raise click.ClickException(f"job {n}: {problem}") from None
        if as_json:
            click.echo(json.dumps({"job": n, **got.model_dump(mode="json")}))
        else:
            score = "-" if got.score is None else f"{got.score:.2f}"
            click.echo(f"{n}: {got.complexity.value:<7} {got.queue:<16} {got.model:<20} "
                       f"{score:>5} {got.reason}")


COMMANDS = [router, route_cmd]
