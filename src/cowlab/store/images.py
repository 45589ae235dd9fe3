"""The image store: layers kept once, as tar files named by digest, under <root>/layers; one
manifest per image under <root>/images. Drivers import from here into their own form."""

from __future__ import annotations

import builtins
import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cowlab.base import faults
from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot
from cowlab.base.units import human_bytes
from cowlab.store import layers as L
from cowlab.store.spec import ImageSpec

BUILDER_VERSION = 2  # bump when the same spec would produce different bytes
Progress = Callable[[int], None]


@dataclass
class Image:
    id: str
    name: str
    layers: list[str]  # layer digests, bottom first
    layer_bytes: list[int]  # tar sizes
    content_bytes: int  # bytes of file content over all layers
    source: str
    spec_hash: str = ""
    created: float = 0.0

    @property
    def short(self) -> str:
        return self.id.split(":")[-1][:12]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _spec_hash(spec: ImageSpec) -> str:
    def enc(o):
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        raise TypeError(o)

    data: dict[str, Any] = {
        "v": BUILDER_VERSION,
        "name": spec.name,
        "seed": spec.seed,
        "mtime": spec.mtime,
        "layers": spec.layers,
    }
    for layer in spec.layers:  # a copied host file changes the image when it changes
        for op in layer.ops:
            if op.op == "copy":
                st = os.stat(op.args["source"])
                data.setdefault("sources", []).append([op.args["source"], st.st_size, st.st_mtime_ns])
    raw = json.dumps(data, default=enc, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def _image_id(digests: Iterable[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(digests).encode()).hexdigest()


class ImageStore:
    def __init__(self, state: StateRoot):
        self.state = state

    # --- queries ---------------------------------------------------------------------------
    def layer_path(self, digest: str) -> Path:
        return self.state.layers / (digest.replace(":", "-") + ".tar")

    def list(self) -> list[Image]:
        out = []
        for p in sorted(self.state.images.glob("*.json")):
            try:
                out.append(Image(**json.loads(p.read_text())))
            except (json.JSONDecodeError, TypeError):
                continue  # a manifest half written by a killed build: not an image
        return out

    def get(self, ref: str) -> Image:
        imgs = self.list()
        for img in imgs:  # a name wins over an id prefix
            if ref == img.name:
                return img
        for img in imgs:
            if ref in (img.id, img.short) or (len(ref) >= 6 and img.id.split(":")[-1].startswith(ref)):
                return img
        names = ", ".join(i.name for i in self.list()) or "none"
        raise CowlabError(f"no image {ref!r} (images: {names}; build one with `cowlab image build SPEC.toml`)")

    def find(self, ref: str) -> Image | None:
        try:
            return self.get(ref)
        except CowlabError:
            return None

    # --- writing ---------------------------------------------------------------------------
    def _staging(self, suffix: str) -> Path:
        return self.state.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"

    def _store_layer(self, tmp: Path, digest: str) -> None:
        dst = self.layer_path(digest)
        if dst.exists():
            tmp.unlink()
        else:
            os.replace(tmp, dst)

    def _manifest(self, name: str) -> Path:
        # Keyed by name: two names may share one id (the same layers), like two tags.
        return self.state.images / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".json")

    def _save(self, img: Image) -> Image:
        old = self._manifest(img.name)
        old_img = Image(**json.loads(old.read_text())) if old.exists() else None
        tmp = self._staging(".json")
        tmp.write_text(json.dumps(img.to_json(), indent=1))
        os.replace(tmp, old)
        if old_img is not None:
            self._gc_layers(old_img.layers)  # the name moved; its old layers may be unused now
        return img

    def _check_space(self, need: int, what: str) -> None:
        st = os.statvfs(self.state.path)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise CowlabError(
                f"{what} needs about {human_bytes(need)} but {self.state.path} has {human_bytes(free)} free"
            )

    def build(self, spec: ImageSpec, name: str | None = None, progress: Progress | None = None) -> Image:
        name = name or spec.name
        h = _spec_hash(spec)
        for img in self.list():
            if img.spec_hash == h and img.name == name and all(self.layer_path(d).exists() for d in img.layers):
                return img  # same spec, same bytes: reuse
        content = L.spec_bytes(spec)
        self._check_space(content + (64 << 20), f"building {name}")
        digests, sizes = [], []
        for entries in L.spec_layers(spec):
            tmp = self._staging(".tar")
            try:
                with open(tmp, "wb") as f:
                    digest, n = L.write_layer_tar(entries, f, spec.mtime, progress)
                faults.point("build", "staged")
                self._store_layer(tmp, digest)
                faults.point("build", "layer")
            finally:
                if tmp.exists():
                    tmp.unlink()
            digests.append(digest)
            sizes.append(n)
        return self._save(
            Image(_image_id(digests), name, digests, sizes, content, f"spec:{spec.source}", h, time.time())
        )

    def import_archive(self, archive: str | Path, name: str | None = None) -> Image:
        """Import a `docker save` archive or an OCI image layout tar (first image in it)."""
        archive = Path(archive)
        where = str(archive)
        if not archive.is_file():
            raise CowlabError(f"{where}: no such file")
        try:
            outer = tarfile.open(archive, "r:*")
        except (tarfile.TarError, EOFError) as e:  # (tarfile lists each method it tried, one a line)
            why = "; ".join(x.strip(" -") for x in str(e).splitlines() if x.strip(" -"))
            raise CowlabError(f"{where}: not a tar archive ({why})") from None
        with outer:
            try:  # an archive cut short or corrupt fails here, as one readable line
                names = {L.member_path(m.name, where): m for m in outer.getmembers() if not m.isdir()}
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise CowlabError(f"{where}: the archive is truncated or corrupt ({e})") from None

            def read_json(n):
                m = names.get(n)
                if m is None or not m.isreg() or m.size > 16 << 20:
                    raise CowlabError(f"{where}: {n} is missing or not a small file")
                try:
                    fobj = outer.extractfile(m)
                    assert fobj is not None  # a regular member always has its data
                    return json.load(fobj)
                except (ValueError, tarfile.TarError, EOFError, OSError) as e:  # JSON, UTF-8, short data
                    raise CowlabError(f"{where}: {n} is not valid JSON ({e})") from None

            try:
                if "manifest.json" in names:
                    man = read_json("manifest.json")
                    if not isinstance(man, list) or not man or not isinstance(man[0], dict):
                        raise CowlabError(f"{where}: manifest.json is not a docker save manifest")
                    entry = man[0]
                    raw = entry.get("Layers", [])
                    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                        raise CowlabError(f"{where}: manifest.json: Layers is not a list of paths")
                    layer_names = [L.member_path(x, where) for x in raw]
                    tags = entry.get("RepoTags")
                    tag = tags[0] if isinstance(tags, list) and tags and isinstance(tags[0], str) else None
                elif "index.json" in names:
                    layer_names, tag = self._oci_layers(read_json, where)
                    if not isinstance(tag, (str, type(None))):
                        tag = None
                else:
                    raise CowlabError(f"{where}: neither manifest.json (docker save) nor index.json (OCI layout)")
            except (AttributeError, TypeError, KeyError, IndexError) as e:  # JSON of the wrong shape
                raise CowlabError(f"{where}: malformed image manifest ({type(e).__name__}: {e})") from None
            if not layer_names:
                raise CowlabError(f"{where}: the image has no layers")
            members = []
            for ln in layer_names:
                m = names.get(ln)
                if m is None or not m.isreg():
                    raise CowlabError(f"{where}: layer {ln} named by the manifest is not in the archive")
                members.append(m)
            self._check_space(sum(m.size for m in members) * 2, f"importing {where}")
            digests, sizes, content = [], [], 0
            stored: list[str] = []
            try:
                for i, m in enumerate(members, 1):
                    tmp = self._staging(".tar")
                    try:
                        digest, n = _copy_uncompressed(outer.extractfile(m), tmp, f"{where}, layer {i}")
                        content += L.check_tar(tmp, f"{where}, layer {i} ({m.name})")
                        # what the layers claim must fit where drivers will unpack them (a header
                        # claiming 1 TiB is refused here, not when a driver fills the disk)
                        self._check_space(content, f"the content of {where} (after layer {i})")
                        if not self.layer_path(digest).exists():
                            stored.append(digest)
                        self._store_layer(tmp, digest)
                        faults.point("import", "layer")
                    finally:
                        if tmp.exists():
                            tmp.unlink()
                    digests.append(digest)
                    sizes.append(n)
            except BaseException:
                self._gc_layers(stored)  # layers this import added, unless an image uses them
                raise
        name = name or tag or archive.name
        return self._save(
            Image(_image_id(digests), name, digests, sizes, content, f"archive:{archive.resolve()}", "", time.time())
        )

    @staticmethod
    def _oci_layers(read_json, where):
        def blob(desc):
            d = desc.get("digest", "") if isinstance(desc, dict) else ""
            algo, _, hexd = d.partition(":")
            if algo != "sha256" or not hexd.isalnum():
                raise CowlabError(f"{where}: bad descriptor digest {d!r}")
            return f"blobs/sha256/{hexd}"

        idx = read_json("index.json")
        mans = idx.get("manifests") if isinstance(idx, dict) else None
        if not mans:
            raise CowlabError(f"{where}: index.json lists no manifests")
        desc = mans[0]
        tag = (desc.get("annotations") or {}).get("io.containerd.image.name") or (desc.get("annotations") or {}).get(
            "org.opencontainers.image.ref.name"
        )
        doc = read_json(blob(desc))
        for _ in range(4):  # an index may point at another index
            if "layers" in doc:
                break
            sub = doc.get("manifests") or []
            if not sub:
                raise CowlabError(f"{where}: OCI manifest has no layers")
            doc = read_json(blob(sub[0]))
        out = []
        for d in doc.get("layers", []):
            mt = d.get("mediaType", "")
            if "zstd" in mt:
                raise CowlabError(f"{where}: zstd-compressed layers are not supported (mediaType {mt})")
            out.append(blob(d))
        return out, tag

    def compose(self, name: str, parts: builtins.list[Image]) -> Image:  # `list` here is the method above
        """An image whose layers are the parts' layers stacked, bottom first (like FROM): no
        layer is rebuilt, so every part keeps its exact bytes (engine mode puts a busybox base
        layer under the primitive workloads' images this way)."""
        digests = [d for p in parts for d in p.layers]
        sizes = [n for p in parts for n in p.layer_bytes]
        h = hashlib.sha256(json.dumps([p.id for p in parts]).encode()).hexdigest()
        old = self.find(name)
        if old is not None and old.spec_hash == h and all(self.layer_path(d).exists() for d in old.layers):
            return old
        return self._save(
            Image(
                _image_id(digests),
                name,
                digests,
                sizes,
                sum(p.content_bytes for p in parts),
                "compose:" + "+".join(p.name for p in parts),
                h,
                time.time(),
            )
        )

    # --- exporting -------------------------------------------------------------------------
    def save_archive(
        self,
        image: Image | str,
        f,
        ref: str | None = None,
        config: dict | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Write an image as a `docker save` archive (the format `docker load` reads) to the
        binary file object f, its layers byte for byte the store's layer tars, so an engine
        that loads it holds the very bytes cowlab's own drivers import. Returns the image id
        an engine gives it (sha256 of the config written).

        ref is the RepoTag (default: docker_ref(image)); config is merged into the image
        config's "config" (Cmd, Env, ...)."""
        img = image if isinstance(image, Image) else self.get(image)
        ref = ref or docker_ref(img)
        cfg_json, cfg_digest = docker_config(img, config)
        mtime = int(img.created) if img.created else 0
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(name: str, data: bytes):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.mode = len(data), mtime, 0o644
                tar.addfile(ti, io.BytesIO(data))

            parent, entries = "", []
            for digest in img.layers:  # legacy v1 dirs, as `docker save` writes them
                v1 = hashlib.sha256(f"{parent}\n{digest}".encode()).hexdigest()
                d = tarfile.TarInfo(v1)
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, mtime
                tar.addfile(d)
                add_bytes(f"{v1}/VERSION", b"1.0")
                v1json = {"id": v1, "created": "1970-01-01T00:00:00Z", "os": "linux"}
                if parent:
                    v1json["parent"] = parent
                add_bytes(f"{v1}/json", json.dumps(v1json, sort_keys=True).encode())
                path = self.layer_path(digest)
                ti = tarfile.TarInfo(f"{v1}/layer.tar")
                ti.size, ti.mtime, ti.mode = path.stat().st_size, mtime, 0o644
                with open(path, "rb") as src:
                    tar.addfile(ti, _Counting(src, progress) if progress else src)
                entries.append(f"{v1}/layer.tar")
                parent = v1
            add_bytes(f"{cfg_digest.split(':')[1]}.json", cfg_json)
            manifest = [{"Config": f"{cfg_digest.split(':')[1]}.json", "RepoTags": [ref], "Layers": entries}]
            add_bytes("manifest.json", json.dumps(manifest).encode())
            repo, _, tag = ref.rpartition(":")
            add_bytes("repositories", json.dumps({repo: {tag: parent}}).encode())
        return cfg_digest

    # --- removing --------------------------------------------------------------------------
    def _gc_layers(self, digests: builtins.list[str]) -> None:
        used = {d for i in self.list() for d in i.layers}
        for d in digests:
            if d not in used:
                self.layer_path(d).unlink(missing_ok=True)

    def _drop(self, img: Image) -> None:
        self._manifest(img.name).unlink(missing_ok=True)
        self._gc_layers(img.layers)

    def remove(self, ref: str) -> Image:
        img = self.get(ref)
        self._drop(img)
        return img


def _copy_uncompressed(src, dst: Path, where: str) -> tuple[str, int]:
    """Copy a layer blob to dst as a plain tar (gunzipping if needed); digest of the plain tar."""
    head = src.read(2)
    rest = src
    if head == b"\x1f\x8b":

        class _Cat:
            def __init__(self):
                self.first = head

            def read(self, n=-1):
                if self.first:
                    b, self.first = self.first, b""
                    return b
                return src.read(n)

        # typeshed's GzipFile wants a file object that can seek too; it only seeks when rewound,
        # and this one is read straight through.
        rest, head = gzip.GzipFile(fileobj=_Cat()), b""  # type: ignore[call-overload]
    h, n = hashlib.sha256(), 0
    try:
        with open(dst, "wb") as out:
            if head:
                h.update(head)
                out.write(head)
                n += len(head)
            while chunk := rest.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
    except (OSError, EOFError, tarfile.TarError) as e:
        raise CowlabError(f"{where}: cannot read layer data ({e})") from None
    return "sha256:" + h.hexdigest(), n


def docker_ref(img: Image) -> str:
    """A reference Docker accepts for a cowlab image: lower case, [a-z0-9._-/], tagged with the
    image's short id (so two names that differ only in case stay apart)."""
    import re

    repo = re.sub(r"[^a-z0-9._/-]+", "-", img.name.lower()).strip("-./") or "image"
    repo = re.sub(r"[._-]{2,}", "-", repo)
    return f"cowlab/{repo}:{img.short}"


def docker_config(img: Image, config: dict | None = None) -> tuple[bytes, str]:
    """The image config JSON of a `docker save` archive (rootfs.diff_ids = the store's layer
    digests, which are sha256 of the plain tars) and its digest."""
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        platform.machine(), platform.machine()
    )
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(img.created) if img.created else 0))
    cfg = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
        **(config or {}),
    }
    doc = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": list(img.layers)},
        "history": [
            {"created": created, "created_by": f"cowlab {img.source} layer {i + 1}"} for i in range(len(img.layers))
        ],
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return raw, "sha256:" + hashlib.sha256(raw).hexdigest()


class _Counting:
    def __init__(self, f, progress: Progress):
        self.f, self.progress = f, progress

    def read(self, n=-1):
        b = self.f.read(n)
        self.progress(len(b))
        return b


__all__ = ["Image", "ImageStore", "docker_ref", "docker_config"]
