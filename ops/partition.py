"""`make partition`: the farm over network namespaces as separate hosts (Valkey and
PostgreSQL on one, the simulator on another, worker hosts w1 … wN), one host's link cut
mid-run and healed; prints the figures (tests/tests_partition.py).

Needs root (network namespaces). Defaults are issue 17's: 2,000 jobs at 2 s submitted at
once, two worker hosts of 100 fixed slots, w1's link cut 8 s into the run for 75 s, the
default lease. Options (or FARM_PARTITION_* variables, e.g. FARM_PARTITION_JOBS=400):
--jobs, --latency, --rate (jobs submitted a second; 0: all at once), --hosts, --slots,
--farm-slots (the workers' FARM_SLOTS: "fixed", a JSON policy, or "default"), --fault
(host: w1's link; services: w1's path to the server host only; server: the server host's
link), --cut-at, --cut (for a worker host: and until its jobs were taken over), and the
workers' --lease, --reaper, --orphan-sweep, --orphan-age (0: the farm's default). Issue 14's
runs: `--jobs 1000 --rate 25 --hosts 3 --slots 50 --cut-at 4 --cut 0 --lease 10 --reaper 2
--orphan-sweep 5 --orphan-age 15`, and `--fault server --jobs 500 --hosts 3 --slots 25
--cut-at 4 --cut 10`. The hosts' data and logs live in a temporary folder (kept with
--keep).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tests_netns import unavailable
from tests_partition import Fault, Scenario, run


def main() -> int:
    env = os.environ.get

    def number(flag: str, default: str, kind: type[float] | type[int] = float,
               note: str | None = None) -> None:
        name = "FARM_PARTITION_" + flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(flag, type=kind, default=kind(env(name, default)), help=note)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    number("--jobs", "2000", int)
    number("--latency", "2")
    number("--rate", "0", note="jobs submitted a second (0: all at once)")
    number("--hosts", "2", int, note="worker hosts")
    number("--slots", "100", int, note="threads (-c) of each worker host")
    parser.add_argument("--farm-slots", default=env("FARM_PARTITION_FARM_SLOTS", "fixed"),
                        help='FARM_SLOTS of the workers ("default": the farm\'s own)')
    parser.add_argument("--fault", choices=[f.value for f in Fault],
                        default=env("FARM_PARTITION_FAULT", Fault.HOST.value))
    number("--cut-at", "8")
    number("--cut", "75")
    for flag in ("--lease", "--reaper", "--orphan-sweep", "--orphan-age"):
        number(flag, "0", note="of the workers (0: the farm's default)")
    parser.add_argument("--services-only", action="store_true",
                        default=env("FARM_PARTITION_SERVICES_ONLY", "") == "1",
                        help="the same as --fault services")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    args = parser.parse_args()
    if (why := unavailable()) is not None:
        print(f"partition: cannot run here: {why}", file=sys.stderr)
        return 2
    scenario = Scenario(
        jobs=args.jobs, latency_s=args.latency, submit_per_s=args.rate or None,
        hosts=args.hosts, slots=args.slots,
        farm_slots=None if args.farm_slots == "default" else args.farm_slots,
        fault=Fault.SERVICES if args.services_only else Fault(args.fault),
        cut_at_s=args.cut_at, cut_s=args.cut, lease_s=args.lease or None,
        reaper_interval_s=args.reaper or None, orphan_sweep_s=args.orphan_sweep or None,
        orphan_age_s=args.orphan_age or None)
    work = Path(tempfile.mkdtemp(prefix="farm-partition-"))
    try:
        figures = run(scenario, work / "hosts")
    finally:
        if args.keep:
            print(f"logs under {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(figures.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
