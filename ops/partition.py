"""`make partition`: issue 17's measurement — the farm over network namespaces as separate
hosts (Valkey, PostgreSQL and the simulator on one, two worker hosts of 100 slots), one
worker host's link cut mid-run for longer than the lease, then healed; prints the figures.

Needs root (network namespaces). Defaults are the issue's: 2,000 jobs at 2 s, the cut 8 s
into the run for 75 s, the default lease. Options (or FARM_PARTITION_* variables, e.g.
FARM_PARTITION_JOBS=400): --jobs, --latency, --cut-at, --cut, --slots, and the workers'
--lease, --reaper, --orphan-sweep, --orphan-age (0: the farm's default). The hosts' data
and logs live in a temporary folder (kept with --keep).
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
from tests_partition import Scenario, run


def main() -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=int(env("FARM_PARTITION_JOBS", "2000")))
    parser.add_argument("--latency", type=float,
                        default=float(env("FARM_PARTITION_LATENCY", "2")))
    parser.add_argument("--cut-at", type=float, default=float(env("FARM_PARTITION_CUT_AT", "8")))
    parser.add_argument("--cut", type=float, default=float(env("FARM_PARTITION_CUT", "75")))
    parser.add_argument("--lease", type=float, default=float(env("FARM_PARTITION_LEASE", "0")),
                        help="FARM_LEASE_S of the workers (0: the farm's default)")
    parser.add_argument("--reaper", type=float,
                        default=float(env("FARM_PARTITION_REAPER", "0")),
                        help="FARM_REAPER_INTERVAL_S of the workers (0: the farm's default)")
    parser.add_argument("--orphan-sweep", type=float,
                        default=float(env("FARM_PARTITION_ORPHAN_SWEEP", "0")),
                        help="FARM_ORPHAN_SWEEP_S of the workers (0: the farm's default)")
    parser.add_argument("--orphan-age", type=float,
                        default=float(env("FARM_PARTITION_ORPHAN_AGE", "0")),
                        help="FARM_ORPHAN_AGE_S of the workers (0: the farm's default)")
    parser.add_argument("--slots", type=int, default=int(env("FARM_PARTITION_SLOTS", "100")))
    parser.add_argument("--services-only", action="store_true",
                        default=env("FARM_PARTITION_SERVICES_ONLY", "") == "1",
                        help="cut w1 off from Valkey and PostgreSQL only, not from the API")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    args = parser.parse_args()
    if (why := unavailable()) is not None:
        print(f"partition: cannot run here: {why}", file=sys.stderr)
        return 2
    scenario = Scenario(jobs=args.jobs, latency_s=args.latency, cut_at_s=args.cut_at,
                        cut_s=args.cut, lease_s=args.lease or None,
                        reaper_interval_s=args.reaper or None,
                        orphan_sweep_s=args.orphan_sweep or None,
                        orphan_age_s=args.orphan_age or None, slots=args.slots,
                        services_only=args.services_only)
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
