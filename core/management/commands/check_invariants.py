from django.core.management.base import BaseCommand
from django.utils import timezone

from core.invariants import describe, invariants_check


class Command(BaseCommand):
    help = (
        "Check in SQL what must always hold (docs/decisions/0012-invariants.md): no car, seat or slot "
        "claimed beyond what it can take, the events' and slots' counters equal to the claims they count, "
        "every ended claim with exactly one audit event into its end state (the claims with an audit event "
        "in the last INVARIANTS_AUDIT_WINDOW_HOURS, 24 h; --all-history: every claim), no hold left HELD longer than "
        "one expiry interval plus INVARIANTS_OVERDUE_MARGIN_SECONDS past its expiry. Prints one line per "
        "invariant (a broken one with how many rows and the ids of the first ones), stores the result "
        "for the admin index and /metrics, and exits with status 1 when any is broken (0 otherwise). "
        "The same job Celery beat runs every CHECK_INVARIANTS_EVERY_SECONDS (60 s); it only reads, "
        "safe beside any traffic."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--all-history",
            action="store_true",
            help="check the audit trail of every claim ever made, not only of the recent ones (a full scan)",
        )

    def handle(self, *args, all_history: bool, **options):
        report = invariants_check(now=timezone.now(), all_history=all_history)
        for line in describe(report):
            self.stdout.write(line)
        broken = report.broken
        if broken:
            self.stderr.write(f"{len(broken)} of {len(report.results)} invariants broken ({report.duration_ms} ms).")
            raise SystemExit(1)
        self.stdout.write(f"All {len(report.results)} invariants hold ({report.duration_ms} ms).")
