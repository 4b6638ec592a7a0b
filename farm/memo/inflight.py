"""The in-flight mark: of identical memoizing jobs (one tenant, one key) running at the same
time, one calls the provider and the others wait for its answer, in Redis.

``claim`` is one Lua script on Redis time: the first job to claim sets the mark (SET NX with
an expiry of FARM_MEMO_WAIT_S, so a crashed holder's mark goes by itself) and calls; a
redelivery of the holder keeps it. Any other job waits: the script notes when it started
waiting (a key of its own, so the wait survives its deferrals), and once it has waited
FARM_MEMO_WAIT_S it is told to call itself. The holder ``release``s the mark after recording
its answer (a compare-and-delete: never another job's mark). A waiting job that finds the mark
gone finds the answer first (farm.memo.run looks before it claims); if there is none, the
holder ended without one to reuse (it failed, escalated, or its answer may not serve), and
the job calls itself at once, without the mark: the jobs that waited do not queue up behind
each other, one call at a time.

A waiting job holds no thread: the task hands it back to its queue with a countdown and no
attempt used (farm.memo.run), like any deferral.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis

PREFIX = "farm:memo:"

CLAIM = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait_ms = tonumber(ARGV[2])
local holder = redis.call('GET', KEYS[1])
if not holder then
  local waited_for = tonumber(redis.call('GET', KEYS[2]))
  if waited_for then
    -- it waited for a holder that has gone without an answer to reuse: no second wait
    redis.call('DEL', KEYS[2])
    return {'call', now - waited_for}
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', wait_ms)
  return {'hold', 0}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], wait_ms)
  return {'hold', 0}
end
local since = tonumber(redis.call('GET', KEYS[2]))
if not since then
  since = now
  redis.call('SET', KEYS[2], tostring(now), 'PX', 2 * wait_ms)
end
local waited = now - since
if waited >= wait_ms then
  redis.call('DEL', KEYS[2])
  return {'call', waited}
end
return {'wait', waited}
"""

RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claimed(StrEnum):
    HOLD = "hold"  # this job holds the mark: it calls, then releases
    WAIT = "wait"  # another job holds it: wait for its answer
    # waited FARM_MEMO_WAIT_S for another job, or for one that ended without an answer to
    # reuse: call without the mark
    CALL = "call"


@dataclass(frozen=True)
class Claim:
    claimed: Claimed
    waited_s: float  # how long this job has waited so far (WAIT, CALL)


def mark_key(tenant: str, key: str) -> str:
    return f"{PREFIX}inflight:{tenant}:{key}"


def waiting_key(job_id: uuid.UUID, key: str) -> str:
    return f"{PREFIX}waiting:{job_id}:{key}"


class InFlight:
    """The marks, on one Redis client (the worker's)."""

    def __init__(self, client: redis.Redis, wait_s: float) -> None:
        self.wait_s = wait_s
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)

    def claim(self, tenant: str, key: str, job_id: uuid.UUID) -> Claim:
        found = self._claim(keys=[mark_key(tenant, key), waiting_key(job_id, key)],
                            args=[str(job_id), max(1, round(self.wait_s * 1000))])
        what, waited_ms = found
        return Claim(Claimed(what.decode() if isinstance(what, bytes) else what),
                     int(waited_ms) / 1000)

    def release(self, tenant: str, key: str, job_id: uuid.UUID) -> None:
        self._release(keys=[mark_key(tenant, key)], args=[str(job_id)])
