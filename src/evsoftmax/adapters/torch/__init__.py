"""torch execution paths; the modules are imported lazily by ``evsoftmax._dispatch``."""
