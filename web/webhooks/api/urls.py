from django.urls import path

from web.webhooks.api import views

urlpatterns = [
    path("webhooks", views.WebhookList.as_view(), name="webhook-list"),
    path("webhooks/<id:endpoint_id>", views.WebhookDetail.as_view(), name="webhook-detail"),
    path("webhooks/<id:endpoint_id>/rotate-secret", views.WebhookRotateSecret.as_view(), name="webhook-rotate-secret"),
    path("webhooks/<id:endpoint_id>/test", views.WebhookTest.as_view(), name="webhook-test"),
    path("webhooks/<id:endpoint_id>/deliveries", views.WebhookDeliveries.as_view(), name="webhook-deliveries"),
]
