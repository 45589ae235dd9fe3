"""Engine mode: the workloads' questions asked through a real Docker Engine (a private dockerd
that cowlab starts for the run), so storage cost and engine cost can be read side by side.

    cowlab bench overlay2 --mode engine|both|primitive

Modules: drivers (the storage drivers dockerd is asked to run), daemon (the private dockerd and
its journaled resources), images (busybox base layer + `docker save` archives + `docker load`),
workloads (creation/density/space through the API), session (the BenchSession part).
The Docker SDK for Python (`pip install -e '.[engine]'`) is imported only when a run needs it.
"""

from cowlab.measure.engine.daemon import EngineRefused, PrivateDockerd, availability
from cowlab.measure.engine.drivers import ENGINE_DRIVERS

__all__ = ["ENGINE_DRIVERS", "EngineRefused", "PrivateDockerd", "availability"]
