"""Django integration for taskpool (app, store, views, Tasks backend): see docs/django.md."""
