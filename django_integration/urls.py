"""URLs of the taskpool app: ``path("taskpool/", include("django_integration.urls"))``.

See django_integration/views.py for what each answers and who may ask.
"""

from django.urls import path

from . import views

urlpatterns = [
    path("health/", views.health, name="taskpool-health"),
    path("tasks/<str:task_id>/", views.task_status, name="taskpool-task"),
]
