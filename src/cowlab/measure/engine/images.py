"""Engine images: the primitive workloads' images with a busybox base layer under them, written
as `docker save` archives and loaded into the private dockerd.

The base layer is built from a spec (a `copy` op of the host's static busybox, a few applet
symlinks, /tmp) and stacked *under* each workload image with ImageStore.compose: the workload's
own layer tars are reused as they are, so primitive and engine mode read the same bytes. The
engine image has one layer more than the primitive one (recorded in run.json, not in sample
params, which stay the primitive ones so the two modes line up).
"""

from __future__ import annotations

import os
import time
import uuid

from cowlab.base.errors import CowlabError
from cowlab.base.sysutil import static_busybox
from cowlab.store.images import Image, ImageStore, docker_ref
from cowlab.store.spec import ImageSpec, from_dict

BASE_NAME = "cowlab-engine-base"
APPLETS = ("sh", "true", "cat", "sleep", "head", "echo", "ls", "sync")
SUFFIX = ".engine"


def base_spec() -> ImageSpec:
    bb = static_busybox()
    if not bb:
        raise CowlabError(
            "engine mode needs a static busybox for containers to run a command "
            "(apt-get install busybox-static, or run vagrant/provision/engine.sh)"
        )
    ops = [
        {"op": "copy", "path": "/bin/busybox", "source": bb, "mode": "0755"},
        {"op": "dir", "path": "/tmp", "mode": "1777"},
    ]
    ops += [{"op": "symlink", "path": f"/bin/{a}", "target": "busybox"} for a in APPLETS]
    return from_dict(
        {
            "name": BASE_NAME,
            "seed": 0,
            "layers": [{"ops": ops, "comment": "static busybox so containers can run a command"}],
        },
        "<engine-base>",
    )


def engine_name(primitive_name: str) -> str:
    return primitive_name + SUFFIX


def build_engine_images(store: ImageStore, primitive: dict[str, Image]) -> dict[str, Image]:
    """spec name → engine image (busybox base + the primitive image's layers)."""
    base = store.build(base_spec())
    return {name: store.compose(engine_name(img.name), [base, img]) for name, img in primitive.items()}


def load(client, store: ImageStore, img: Image) -> tuple[str, float]:
    """Write img as a `docker save` archive under the state root's tmp and `docker load` it
    (through the SDK). Returns (reference, seconds the load took). The archive is removed."""
    ref = docker_ref(img)
    tmp = store.state.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.docker.tar"
    try:
        with open(tmp, "wb") as f:
            image_id = store.save_archive(img, f, ref, config={"Cmd": ["/bin/sh"]})
        with open(tmp, "rb") as f:
            t0 = time.perf_counter()
            msgs = list(client.api.load_image(f))
            dt = time.perf_counter() - t0
    finally:
        tmp.unlink(missing_ok=True)
    for m in msgs:
        if isinstance(m, dict) and (m.get("error") or m.get("errorDetail")):
            raise CowlabError(f"docker load of {img.name}: {m.get('error') or m.get('errorDetail')}")
    got = client.api.inspect_image(ref)["Id"]
    if got != image_id:
        raise CowlabError(f"docker load of {img.name} gave image {got}, expected {image_id}")
    return ref, dt
