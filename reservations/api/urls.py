from django.urls import path

from reservations.api import views

urlpatterns = [
    path("cars", views.CarList.as_view(), name="car-list"),
    path("cars/<id:car_id>", views.CarDetail.as_view(), name="car-detail"),
    path("reservations", views.ReservationList.as_view(), name="reservation-list"),
    path("reservations/car/<id:car_id>", views.CarCurrentReservation.as_view(), name="car-current-reservation"),
    path("reservations/<id:reservation_id>", views.ReservationDetail.as_view(), name="reservation-detail"),
    path("reservations/<id:reservation_id>/confirm", views.ReservationConfirm.as_view(), name="reservation-confirm"),
    path("reservations/<id:reservation_id>/cancel", views.ReservationCancel.as_view(), name="reservation-cancel"),
    path("reservations/<id:reservation_id>/events", views.ReservationEvents.as_view(), name="reservation-events"),
]
