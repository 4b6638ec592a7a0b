"""The store: Postgres as the record of every job, attempt and cent.

``db`` (the farm's own psycopg connections: a worker imports no SQLAlchemy), ``schema``
(the SQLAlchemy tables Alembic's migrations create, and the reports' engines), ``jobs``
(every read and write of jobs; idempotent writes), ``keyed`` (jobs with an idempotency key: the
unique index decides who holds a key), ``attempts`` (a call's attempt row and the job's
move, fenced by generation) and ``migrate`` (Alembic, from settings). The reporting views are
created by the migrations and read by ``farm.costs``.
"""
