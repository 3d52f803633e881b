"""``python -m taskpool`` is ``taskpool-supervisor``."""

from .cli import main

raise SystemExit(main())
