from django.urls import path

from web.organisations.api import views

urlpatterns = [
    path("organisations", views.OrganisationList.as_view(), name="organisation-list"),
    path("organisations/<id:organisation_id>/members", views.MemberList.as_view(), name="organisation-members"),
    path(
        "organisations/<id:organisation_id>/members/<id:user_id>",
        views.MemberDetail.as_view(),
        name="organisation-member",
    ),
]
