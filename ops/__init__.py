"""Running the system: the embedded defaults, the supervisor, manage.py up, serve and cluster."""
