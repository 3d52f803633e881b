"""Placeholder: the Django Tasks backend is being written."""


def register_tasks() -> None:
    pass
