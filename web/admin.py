"""The platform's own pages in the back office that belong to no app of their own (Django finds an app's
``admin`` module, and ``web.organisations`` is a package of the ``web`` app): organisations and members."""

from web.organisations import admin as organisations  # noqa: F401  (registers the pages)
