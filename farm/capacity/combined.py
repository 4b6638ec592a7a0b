"""The breaker and the limiter in one Redis round trip each way: a job's admission is the
breaker's allow and, unless it rejects, the limiter's acquire (``ADMIT``); its end is the
limiter's release and the breaker's record (``FINISH``). Separately they were four EVALSHA
per job, each ~60-80 µs of a worker's CPU under the GIL (farm issue 16).

The scripts stay the breaker's (``farm.capacity.breaker.LUA``) and the limiter's
(``farm.capacity.scripts``), unchanged: each is wrapped as a Lua function of its own KEYS and
ARGV (the parameters shadow the globals; a chunk's top-level ``return`` returns from the
function), so each runs exactly as it does alone, on the slice of the keys and args the glue
hands it. The keys, the args and the reading of the replies are the limiter's and the
breaker's own methods too: the single calls (operator commands, tests) and the paired ones
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from farm.capacity.breaker import LUA as BREAKER
from farm.capacity.breaker import Breaker
from farm.capacity.circuit import Admission, BreakerDecision, Event
from farm.capacity.limiter import Limiter
from farm.capacity.limits import Grant, Wait
from farm.capacity.scripts import ACQUIRE, RELEASE
from farm.costs.budgets import Seed
from farm.costs.ledger import Charge, OverBudget
from farm.jobs import Priority

# KEYS: the first script's, then the second's. ARGV: the first's key count and arg count,
# the first's args, then the second's. Returns {first's reply} when the first's reply makes
# the second moot (``skip``, a Lua condition on ``reply``), else {first's, second's}.
GLUE = r"""
local function slice(t, from, to)
  local out = {}
  for i = from, to do out[#out + 1] = t[i] end
  return out
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local reply = first(slice(KEYS, 1, nk), slice(ARGV, 3, 2 + na))
if %(skip)s then return {reply} end
return {reply, second(slice(KEYS, nk + 1, #KEYS), slice(ARGV, 3 + na, #ARGV))}
"""


def chain(first: str, second: str, *, skip: str = "false") -> str:
    """One script that runs the script ``first``, then (unless ``skip``) ``second``."""
    return (f"local function first(KEYS, ARGV)\n{first}\nend\n"
            f"local function second(KEYS, ARGV)\n{second}\nend\n" + GLUE % {"skip": skip})


# allow, then acquire unless the breaker rejects (reply {before, after, admission, retry})
ADMIT = chain(BREAKER, ACQUIRE, skip="reply[3] == 'reject'")
# release, then record
FINISH = chain(RELEASE, BREAKER)


def _joined(first: tuple[Any, Any], second: tuple[Any, Any]) -> dict[str, list[Any]]:
    """The keys and args of a chained script."""
    (k1, a1), (k2, a2) = first, second
    return {"keys": [*k1, *k2], "args": [len(k1), len(a1), *a1, *a2]}


class Paired:
    """``farm.capacity.admission.Pair`` on the Redis limiter and breaker of one client."""

    def __init__(self, limiter: Limiter, breaker: Breaker) -> None:
        if limiter.redis is not breaker.redis:
            raise ValueError("the limiter and the breaker must share one Redis client")
        self.limiter, self.breaker = limiter, breaker
        self._admit = limiter.redis.register_script(ADMIT)
        self._finish = limiter.redis.register_script(FINISH)

    def admit(self, model: str, *, input_tokens: int, output_tokens: int, priority: Priority,
              tenant: str, waited_s: float = 0.0, charge: Charge | None = None,
              ) -> tuple[BreakerDecision, Grant | Wait | Seed | OverBudget | None]:
        """The breaker's decision and, unless it rejects, the limiter's answer."""
        acquiring = self.limiter.acquire_call(
            model, input_tokens=input_tokens, output_tokens=output_tokens, priority=priority,
            tenant=tenant, waited_s=waited_s, charge=charge)
        reply = self._admit(**_joined(self.breaker.call(model, Event.ALLOW),
                                      (acquiring.keys, acquiring.args)))
        decision = self.breaker.allowed(model, reply[0])
        if decision.admission is Admission.REJECT:
            return decision, None
        return decision, self.limiter.acquired(acquiring, reply[1])

    def finish(self, model: str, grant: Grant, *, input_tokens: int | None,
               output_tokens: int | None, success: bool | None, probe: bool) -> None:
        """Release the grant, then record the call's outcome (None: not the breaker's
        business); one round trip when there are both."""
        if success is None:
            self.limiter.release(grant, input_tokens=input_tokens, output_tokens=output_tokens)
            return
        release = self.limiter.release_call(grant, input_tokens=input_tokens,
                                            output_tokens=output_tokens)
        if release is None:  # granted while the model had no limits: nothing to release
            self.breaker.record(model, success=success, probe=probe)
            return
        op = Event.SUCCESS if success else Event.FAILURE
        reply = self._finish(**_joined(release, self.breaker.call(model, op, probe)))
        self.breaker.recorded(model, op, probe, reply[1])
