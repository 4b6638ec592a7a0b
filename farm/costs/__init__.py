"""Costs: what each call cost and where the money went.

``pricing`` (prices as data, ``prices.csv``; Decimal cost of a call's usage), ``reports``
(per queue and model, over the jobs and attempts in Postgres) and ``money`` (Decimal
dollars written for JSON, exactly, and for people, never in scientific notation).
"""
