from __future__ import annotations

from typing import TypedDict

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class IdempotencyRecord(models.Model):
    """One Idempotency-Key of one caller (docs/contract.md §3.4): the stored response of the request that
    used it, inserted in that request's transaction (``web.idempotency``), so a record is always
    complete. (A record with no ``response_status`` could only be a claim left by the design before
    ADR 0003's rewrite; it is taken over.) ``created_at`` is when the request began, for the TTL."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of method, path and body")
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=512)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_one_record_per_caller_key"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"


class Result(TypedDict):
    """One invariant's result in an ``InvariantReport`` (``core.invariants.evaluate``)."""

    name: str
    holds: str
    model: str  # "app_label.model_name"
    violations: int
    rows: list[str]  # up to invariants.SAMPLE_ROWS ids
    ms: int  # how long its query took


class InvariantReport(models.Model):
    """The last run of the invariant checks (``core.invariants``): one row (``ONLY``), replaced by
    each run, so that every process — the admin index, ``/metrics`` on any web worker — reads the same
    result. ``results``: one ``Result`` per invariant, broken or not."""

    ONLY = 1

    checked_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    results = models.JSONField(default=list)

    def __str__(self) -> str:
        return f"Invariants checked at {self.checked_at:%Y-%m-%d %H:%M:%S}"

    @property
    def broken(self) -> list[Result]:
        return [result for result in self.results if result["violations"]]
