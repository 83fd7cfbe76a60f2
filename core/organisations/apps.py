from django.apps import AppConfig


class OrganisationsConfig(AppConfig):
    name = "core.organisations"
    label = "organisations"
    verbose_name = "Organisations"
