from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "booking_site.audit"
    label = "audit"
    verbose_name = "Audit trail"
