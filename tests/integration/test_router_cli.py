"""`farm route`, `farm router feedback|report|train|calibrate` against real Redis and
Postgres: decisions are shown without enqueuing anything, feedback is kept per job and
reported, retraining takes it in, and bad input is refused naming the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from farm.cli.main import main
from farm.client import Farm
from farm.routing.model import MODEL_PATH, load
from farm.settings import Settings
from tests_support import fresh_database

DESIGN = ("Design the rate limiter for our multi-region API gateway: 40k requests/s, tenants "
          "with their own quotas, Redis in each region, and no global lock. What trade-offs?")
FACT = "What is the capital of Portugal?"


@pytest.fixture
def env(broker_url: str, database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    with fresh_database(database_url, "routercli", "head") as url:
        yield {"FARM_BROKER_URL": broker_url, "FARM_DATABASE_URL": url,
               "FARM_DATA_DIR": str(tmp_path)}


def farm(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def count_jobs(env: dict[str, str]) -> int:
    with Farm(Settings(broker_url=env["FARM_BROKER_URL"],
                       database_url=env["FARM_DATABASE_URL"])) as f, f.engine.connect() as c:
        return int(c.execute(text("select count(*) from jobs")).scalar_one())


def test_route_shows_decisions_and_enqueues_nothing(env: dict[str, str]) -> None:
    code, out, err = farm(env, "route", "--prompt", DESIGN)
    assert code == 0, err
    assert out.split()[1:3] == ["complex", "sonnet-complex"] and "score" in out
    jobs = "\n".join(json.dumps(j) for j in (
        {"prompt": FACT}, {"prompt": DESIGN}, {"prompt": FACT, "model": "claude-sonnet-5-5"}))
    code, out, err = farm(env, "route", "--file", "-", "--json", stdin=jobs)
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["complexity"] for g in got] == ["simple", "complex", "complex"]
    assert [g["queue"] for g in got] == ["haiku-simple", "sonnet-complex", "sonnet-complex"]
    assert got[2]["reason"] == "explicit model" and got[2]["score"] is None
    assert all(isinstance(g["score"], float) for g in got[:2])
    assert count_jobs(env) == 0
    # the band sends an uncertain job to a second opinion on the simple queue
    code, out, _ = farm({**env, "FARM_ROUTER_SECOND_OPINION": "0,1"}, "route", "--prompt",
                        DESIGN, "--json")
    assert code == 0 and json.loads(out)["second_opinion"] is True
    # bad input names the job and the problem
    code, _, err = farm(env, "route", "--file", "-", stdin='{"prompt": "ok"}\n{"prompt": \n')
    assert code == 1 and "job 2: not JSON" in err
    code, _, err = farm(env, "route", "--file", "-", stdin='{"prompt": "  "}\n')
    assert code == 1 and "job 1: prompt" in err
    code, _, err = farm(env, "route")
    assert code == 2 and "give --prompt or --file" in err


def test_feedback_is_kept_reported_and_trained_on(env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings(broker_url=env["FARM_BROKER_URL"], database_url=env["FARM_DATABASE_URL"])
    with Farm(settings) as f:
        fact, design = f.submit_many([{"prompt": FACT}, {"prompt": DESIGN}])
    assert farm(env, "router", "feedback", str(fact), "complex")[0] == 0  # changed below
    code, out, err = farm(env, "router", "feedback", str(fact), "simple")
    assert code == 0 and f"job {fact}: labelled simple" in out, err
    assert farm(env, "router", "feedback", str(design), "simple")[0] == 0  # a misroute
    code, out, err = farm(env, "router", "report", "--feedback")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("feedback: threshold")
    assert lines[2].split()[:3] == ["feedback", "2", "50.0%"]
    assert "as routed when submitted: 1/2 right" in out
    assert f"misrouted feedback-{design}: complex" in out and "1 misrouted of 2" in out
    # a job that does not exist, a label that is not one
    code, _, err = farm(env, "router", "feedback", "7" * 8 + "-0000-0000-0000-" + "0" * 12,
                        "simple")
    assert code == 1 and "no job 77777777-0000-0000-0000-000000000000" in err
    code, _, err = farm(env, "router", "feedback", str(fact), "medium")
    assert code == 2 and "'medium' is not one of 'simple', 'complex'" in err
    # retraining takes the feedback in; the shipped model is not touched
    model = tmp_path / "model.json"
    shutil.copy(MODEL_PATH, model)
    code, out, err = farm(env, "router", "train", "--feedback", "--epochs", "2",
                          "--out", str(model))
    assert code == 0 and "and 2 from feedback" in out, err
    assert load(model).meta["feedback"] == 2 and load(model) != load()
    code, out, err = farm(env, "router", "calibrate", "--share", "0.5", "--model", str(model))
    assert code == 0, err
    share = float(out.split("complex recall")[1].split("%, ")[1].split("%")[0])
    assert abs(share - 50) <= 1, out  # the dev split's half, to a job
    assert load(model).meta["share_target"] == 0.5
    code, _, err = farm(env, "router", "calibrate", "--model", str(model))
    assert code == 2 and "not both" in err
