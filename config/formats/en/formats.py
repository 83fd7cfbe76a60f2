"""Date formats of the admin (FORMAT_MODULE_PATH): compact, 24-hour, unambiguous; Django's "en" formats
for everything not named here. The spaces inside a date are non-breaking: a squeezed list column breaks
a time after its comma, never inside the date."""

DATETIME_FORMAT = "j\u00a0M\u00a0Y, H:i"  # 1 Dec 2026, 22:04
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "D\u00a0j\u00a0M\u00a0Y"  # Tue 1 Dec 2026
