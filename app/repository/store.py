"""The model repository every worker and replica serves from.

```
models/<name>/<version>/      model.onnx, model.onnx.data, spec.json (+ metrics, checkpoint...)
models/<name>/CURRENT         the version unaddressed requests get, one line
models/<name>/labels/<label>  a version by another name (stable, canary...), one line
models/<name>/policy.yaml     optional: versions kept loaded, a traffic split, a shadow
```

A version directory is written once under a hidden staging name and renamed into place
complete, so a reader never sees half a version; nothing is ever renamed away from under a
reader. ``CURRENT`` and every label are replaced with ``os.replace``, which is atomic on POSIX
file systems, so a reader sees the old pointer or the new one. Every worker polls the pointer (see
:class:`~app.scoring.registry.ModelRegistry`): writing it once rolls a version out to every
process that shares the directory.

A flat model directory from ctrserve's first stage (``spec.json`` at the top) still loads,
as a repository of one version with no pointer to follow.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.features.errors import SpecError
from app.repository.manifest import MANIFEST_FILE, ModelManifest, read_version, verify_files
from app.repository.policy import POLICY_FILE, load_policy

POINTER_FILE = "CURRENT"
LABELS_DIR = "labels"
_STAGING_PREFIX = ".staging-"
_RETIRED_PREFIX = ".pruned-"
# Versions are content hashes written by export; anything else that names a directory
# inside the repository (no separators, no dot-files) is accepted, so hand-made versions work.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PublishRefusedError(SpecError):
    """A model directory an admin request may not publish from (a path outside the publish
    root, a symbolic link): refused before anything is read."""


def check_version_name(version: str, kind: str = "version") -> str:
    """``version`` if it can name a version directory (or a label's or a model's file, as
    ``kind`` says in the message); :class:`SpecError` otherwise."""
    if not _VERSION.fullmatch(version):
        raise SpecError(
            f"{version!r} is not a {kind} name (letters, digits, '.', '_', '-'; "
            "at most 128 characters, not starting with a dot)"
        )
    return version


class ModelRepository:
    """A directory of immutable model versions plus the ``CURRENT`` pointer.

    Args:
        root: ``models/<name>``.
        name: the model's name; default: the directory's name.
    """

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.root = root
        self._name = name

    @property
    def name(self) -> str:
        return self._name or self.root.resolve().name

    @property
    def is_flat(self) -> bool:
        """A first-stage model directory: one version, no pointer."""
        return (self.root / MANIFEST_FILE).is_file()

    def versions(self) -> list[str]:
        """Complete versions present, oldest first."""
        if self.is_flat:
            return [read_version(self.root)]
        if not self.root.is_dir():
            return []
        found = [
            entry
            for entry in self.root.iterdir()
            if entry.is_dir()
            and _VERSION.fullmatch(entry.name)
            and (entry / MANIFEST_FILE).is_file()
        ]
        # By when their manifest was written (at export), without reading the manifests:
        # a spec.json with million-value vocabularies is not read on every /model call.
        return [e.name for e in sorted(found, key=lambda d: (_written(d), d.name))]

    def current_version(self) -> str:
        """The version ``CURRENT`` names (or a flat directory's own version).

        Raises:
            SpecError: no pointer, or it names something that is not a version.
        """
        if self.is_flat:
            return read_version(self.root)
        pointer = self.root / POINTER_FILE
        try:
            version = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SpecError(
                f"{self.root}: neither a model repository (no {POINTER_FILE} file) nor an "
                f"exported model directory (no {MANIFEST_FILE}); export a model into it first"
            ) from None
        except (OSError, ValueError) as exc:  # ValueError: undecodable, or a NUL in the path
            raise SpecError(f"{pointer}: cannot read it ({exc})") from None
        return check_version_name(version)

    def version_dir(self, version: str) -> Path:
        """The directory of ``version`` (checked to exist)."""
        if self.is_flat:
            if version != read_version(self.root):
                raise SpecError(f"{self.root} is a flat model directory without version {version}")
            return self.root
        path = self.root / check_version_name(version)
        if not path.is_dir():
            raise SpecError(f"{self.root}: no version {version} (have: {self.versions()})")
        return path

    def current_dir(self) -> Path:
        return self.version_dir(self.current_version())

    def set_current(self, version: str) -> None:
        """Point ``CURRENT`` at an existing version, atomically (write a temp file, rename)."""
        if self.is_flat:
            raise SpecError(
                f"{self.root} is a flat model directory with no {POINTER_FILE} pointer; serve a "
                "model repository (what `python -m training train --out` writes) to switch versions"
            )
        with self.locked():
            self.version_dir(version)
            _write_pointer(self.root, POINTER_FILE, version)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's lock while the block runs, so a pointer is never moved to a
        version that a prune is removing: an exclusive ``flock`` on the directory itself,
        which needs no file of its own and so works on a read-only mount too."""
        try:
            handle = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise SpecError(f"{self.root}: cannot open the repository ({exc.strerror})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing the descriptor releases the lock

    def retire(self, version: str) -> Path:
        """Move ``version`` out of sight (a hidden name no reader lists), under the lock;
        returns where it went, for the caller to delete. Files a worker still has open or
        mapped stay readable until it lets them go."""
        source = self.version_dir(version)
        target = Path(tempfile.mkdtemp(prefix=f"{_RETIRED_PREFIX}{version}-", dir=self.root))
        os.replace(source, target)
        return target

    def retired(self) -> list[Path]:
        """Versions moved out of sight and not yet deleted (a prune that was interrupted)."""
        try:
            return [e for e in self.root.iterdir() if e.name.startswith(_RETIRED_PREFIX)]
        except OSError:
            return []

    def labels(self) -> dict[str, str]:
        """Every label and the version it names (a label naming no version is left out
        here and refused by :meth:`set_label`)."""
        folder = self.root / LABELS_DIR
        if self.is_flat or not folder.is_dir():
            return {}
        found = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or not _VERSION.fullmatch(entry.name):
                continue
            try:
                found[entry.name] = check_version_name(entry.read_text(encoding="utf-8").strip())
            except (OSError, ValueError, SpecError):  # half a label is no label; logged by the poll
                continue
        return found

    def set_label(self, label: str, version: str) -> None:
        """Point ``label`` at an existing version, atomically, as ``CURRENT`` is moved."""
        if self.is_flat:
            raise SpecError(f"{self.root} is a flat model directory: it has no labels")
        check_version_name(label, "label")
        if label == POINTER_FILE or (self.root / label).is_dir():
            raise SpecError(f"{label!r} names a version (or CURRENT); a label needs its own name")
        folder = self.root / LABELS_DIR
        with self.locked():
            self.version_dir(version)
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise SpecError(f"cannot make {folder}: {exc}") from None
            _write_pointer(folder, label, version)

    def remove_label(self, label: str) -> None:
        """Remove ``label`` (:class:`SpecError` if there is none, or if the policy's split
        or shadow names it: a worker started after would serve neither)."""
        path = self.root / LABELS_DIR / check_version_name(label, "label")
        naming = [part for part, name in load_policy(self.root).names().items() if name == label]
        if naming and path.exists():
            raise SpecError(
                f"{self.root}: {POLICY_FILE} names label {label!r} (its {' and '.join(naming)}): "
                "point them elsewhere first, or move the label to another version"
            )
        try:
            path.unlink()
        except FileNotFoundError:
            raise SpecError(f"{self.root}: no label {label!r} (have: {self.labels()})") from None

    def staging_dir(self) -> Path:
        """A fresh hidden directory inside the repository to build a version in."""
        if self.is_flat:
            raise SpecError(
                f"{self.root} is a flat model directory from an older ctrserve; export to a new "
                f"path, or move its files into {self.root}/<version>/ and write {POINTER_FILE}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))

    def commit(self, staging: Path, version: str) -> Path:
        """Rename a finished staging directory into place as ``version``.

        A version is immutable: when it already exists (the same content hash, exported
        again) the staging copy is dropped and the existing directory kept.
        """
        target = self.root / check_version_name(version)
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST_FILE).is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def publish(self, source: Path) -> str:
        """Copy an exported model (flat directory or another repository's current version)
        in as a new version: every file spec.json lists, each checked after the copy (the
        checkpoint included), so a file damaged in transit never becomes a version. The
        caller loads ``source`` first; returns its version."""
        source_dir = ModelRepository(source).current_dir()
        manifest = ModelManifest.load(source_dir)
        version = manifest.version
        if (self.root / version / MANIFEST_FILE).is_file():
            return version
        try:
            staging = self.staging_dir()
        except OSError as exc:
            raise SpecError(f"cannot add a version to {self.root}: {exc}") from None
        try:
            for name in [MANIFEST_FILE, *manifest.files]:
                item = source_dir / name
                if item.is_symlink():
                    raise SpecError(f"{item}: a symbolic link; publish the files themselves")
                shutil.copy2(item, staging / name)
            verify_files(staging, manifest.files)
            self.commit(staging, version)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise SpecError(f"cannot copy {source_dir} into {self.root}: {exc}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version


def find_models(root: Path, name: str | None = None) -> dict[str, ModelRepository]:
    """The models to serve from ``root``, by name: ``root`` itself when it is one model (a
    ``CURRENT`` pointer, a flat export, or version folders; named ``name`` or after the
    folder), else every folder in it that is one, named after it.

    Raises:
        SpecError: no model there.
    """
    if is_model(root):
        repository = ModelRepository(root, name)
        return {repository.name: repository}
    if name is not None:
        raise SpecError(
            f"{root} holds several models, each named after its folder; CTR_MODEL_NAME "
            "names the model of a one-model directory only"
        )
    if not root.is_dir():
        raise SpecError(f"{root}: no such model repository (CTR_MODEL_REPOSITORY)")
    try:
        folders = sorted(entry for entry in root.iterdir() if entry.is_dir())
    except OSError as exc:
        raise SpecError(f"{root}: cannot read the model repository ({exc})") from None
    found = {f.name: ModelRepository(f, f.name) for f in folders if is_model(f)}
    if not found:
        raise SpecError(
            f"{root}: no model in it: neither one model (a {POINTER_FILE} pointer and version "
            f"folders, as `python -m training train --out` writes, or a flat export's "
            f"{MANIFEST_FILE}) nor folders of models"
        )
    return found


def is_model(folder: Path) -> bool:
    """Whether ``folder`` is one model's: a pointer, a flat export, or version folders."""
    if (folder / POINTER_FILE).is_file() or (folder / MANIFEST_FILE).is_file():
        return True
    try:
        return any((entry / MANIFEST_FILE).is_file() for entry in folder.iterdir())
    except OSError:
        return False


def confined_source(requested: str, root: Path | None) -> Path:
    """The model directory an admin request names, if it may be published from.

    It must lie under ``root`` (``CTR_PUBLISH_ROOT``; a relative path is taken from there),
    with no ``..`` and no symbolic link on the way or inside it: what is copied into the
    repository is shared by the whole fleet, so a request may not reach elsewhere.

    Raises:
        PublishRefusedError: with the reason; nothing has been read or copied.
    """
    if root is None:
        raise PublishRefusedError(
            "publishing a model_dir is disabled: set CTR_PUBLISH_ROOT to the directory "
            "exported models may be taken from"
        )
    path = Path(requested)
    if ".." in path.parts:
        raise PublishRefusedError(f"{requested}: '..' is not allowed in model_dir")
    base = root.resolve()
    path = path if path.is_absolute() else base / path
    if not path.is_relative_to(base):
        raise PublishRefusedError(
            f"{requested}: outside the publish root {base} (CTR_PUBLISH_ROOT)"
        )
    step = base
    for part in path.relative_to(base).parts:
        step = step / part
        if step.is_symlink():
            raise PublishRefusedError(f"{requested}: {step} is a symbolic link")
    if not path.is_dir():
        raise SpecError(f"{requested}: no such model directory")
    for folder, folders, files in os.walk(path):
        for name in [*folders, *files]:
            if (Path(folder) / name).is_symlink():
                raise PublishRefusedError(f"{requested}: {Path(folder) / name} is a symbolic link")
    return path


def _write_pointer(folder: Path, name: str, version: str) -> None:
    """Write ``folder/name`` holding ``version``: a temp file, fsynced, renamed over it."""
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    except OSError as exc:
        raise SpecError(f"cannot write {name} in {folder}: {exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as pointer:
            pointer.write(version + "\n")
            pointer.flush()
            os.fsync(pointer.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, folder / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _written(version_dir: Path) -> float:
    try:
        return (version_dir / MANIFEST_FILE).stat().st_mtime
    except OSError:
        return 0.0


def resolve_model_dir(path: Path) -> Path:
    """The directory holding the model to use: a flat directory itself, or a repository's
    current version. Commands that take ``--model-dir`` accept either."""
    return ModelRepository(path).current_dir()
