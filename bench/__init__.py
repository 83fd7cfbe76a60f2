"""``make bench`` (``python -m bench``): the measuring instrument. See docs/benchmarks.md.

Starts the server the production way (``manage.py serve``) on a fresh ``<database>_bench`` database,
creates its own data, drives load from separate processes (wrk, and a small barrier client for the
hot-resource races), accounts the CPU of the server, PostgreSQL and the load client per request, and
prints one table. Nothing under ``bench`` is imported by the application.
"""
