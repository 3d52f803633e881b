from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("reports/<str:task_id>/", views.report, name="report"),
]
