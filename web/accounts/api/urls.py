from django.urls import path

from web.accounts.api import views

urlpatterns = [
    path("users", views.UserRegister.as_view(), name="user-register"),
    path("users/me", views.UserMe.as_view(), name="user-me"),
    path("users/me/calendar-feed", views.MyCalendarFeed.as_view(), name="calendar-feed"),
    path("calendar/<str:secret>.ics", views.CalendarFeedDocument.as_view(), name="calendar-feed-document"),
]
