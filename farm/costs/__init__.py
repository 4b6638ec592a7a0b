"""Costs: what each call cost and where the money went.

``pricing`` (prices as data, ``prices.csv``; Decimal cost of a call's usage), ``reports``
(per queue and model, over the jobs and attempts in Postgres) and ``money`` (Decimal
dollars written for JSON, exactly, and for people, never in scientific notation).
``caching`` and ``prompt_cache`` place prompt caching's breakpoints (the minimum cacheable
length per model is data too, ``cache_minimums.csv``) and resolve a call's cache TTL.
"""
