"""The database backend (``DATABASES["default"]["ENGINE"] = "core.db"``): ``core.db.base``."""
