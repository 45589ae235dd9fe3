"""storage: the drivers (one module or package per backend, one interface), their backings,
and the kernel VM that runs a driver this kernel lacks."""
