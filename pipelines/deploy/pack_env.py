"""Pack the Python environment Spark executors need into one archive, for ``spark.archives``.

Executors on a cluster do not share the driver's virtualenv.  Spark unpacks the archive into each
executor's working folder under the name after ``#``, and starts its Python workers from there::

    spark-submit --conf spark.archives=/abs/path/lime-rank-env.tar.gz#environment \\
                 --conf spark.pyspark.python=./environment/bin/python ...

(under spark-submit in client mode the driver keeps its own interpreter: also set
``spark.pyspark.driver.python``, else the driver would look for ``./environment/bin/python`` in the
submitting folder; ``lime-rank`` commands pass ``--spark-conf`` and keep their own already).

Use ``.tar.gz`` (or ``.tgz``) for ``spark.archives``: Spark 4.2 unpacks those with the system ``tar``,
which keeps symlinks and modes.  A ``.tar`` it unpacks with Hadoop's Java untar, which refuses a
symlink leading out of the folder (``bin/python3``) and drops executable bits, so no interpreter
could run from it (both tried on ``local-cluster``); a ``.tar`` is for unpacking yourself
(``tar -xf`` on each host, ``spark.pyspark.python`` = the unpacked ``bin/python``).  A ``.zip``
(stored, uncompressed) Spark unpacks with Java too, keeping the modes: it holds copies of the
interpreter instead of links, and is the cheapest to unpack (a byte copy, no gunzip), which
matters because the driver and every executor of every application unpack it again.

The archive, relative to its root (``./environment/`` on an executor)::

    pyvenv.cfg                          copied from the venv
    bin/python, python3, python3.X      the venv's links to the base interpreter; no console scripts
    lib/python3.X/site-packages/        the runtime distributions (the files of their RECORD, their
                                        .dist-info included) and the project packages lime_model/,
                                        pipelines/, jobs/ copied from the source tree
    lime_rank_env.json                  what was packed: Python, distributions, git commit, time

Left out, on purpose:

- ``pyspark`` (and py4j, reached only through it): each worker's Spark puts
  ``$SPARK_HOME/python/lib/pyspark.zip`` and py4j's zip on its Python workers' ``PYTHONPATH``
  (the workers' Spark must be the driver's version).
- ``apache-airflow`` and its Spark provider: they run on the Airflow host only.  A dependency
  reached only through an excluded distribution is never visited, so it is left out too.
- the ``lime-rank`` distribution itself: in the dev venv it is an editable install (a ``.pth`` and
  a finder pointing at the checkout, which workers do not have); its packages are copied instead.

The contract is ``venv``'s own (and venv-pack's): ``bin/python3`` is a symlink to the base
interpreter (``/usr/bin/python3.11``, a pyenv build...), so every worker needs that same base
Python at the same path (the manifest's ``base_python``), and the compiled wheels (torch, pyarrow)
must suit the workers' OS and CPU.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import logging
import os
import platform
import posixpath
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.errors import PackEnvError

log = logging.getLogger(__name__)

EXCLUDED_DISTRIBUTIONS = ("apache-airflow", "apache-airflow-providers-apache-spark", "pyspark")
PROJECT_DISTRIBUTION = "lime-rank"
PROJECT_PACKAGES = ("lime_model", "pipelines", "jobs")
MANIFEST_NAME = "lime_rank_env.json"
SKIPPED_FOLDERS = {"tests", "include"}
ARCHIVE_ALIAS = "environment"  # the ``#environment`` of spark.archives: the folder Spark unpacks into
EXECUTOR_PYTHON = f"./{ARCHIVE_ALIAS}/bin/python"

# suffix -> compression (.tar: see the module's docstring; .zip: stored, the interpreter copied).  gzip level 1
# by default: on torch's libtorch_cpu.so (434 MB, 2-core machine) level 1 took 3.8 s for 131 MB, level 6
# 12.8 s and level 9 32.3 s for 114 MB: 3-8x the time for 13% less.
ARCHIVE_FORMATS = {".tar.gz": "gzip", ".tgz": "gzip", ".tar": "none", ".zip": "zip"}
SPARK_FORMATS = ("gzip", "zip")  # what Spark can unpack into a runnable environment
# tarfile copies files 16 KiB at a time by default; 1 MiB packed the 1.5 GB .tar in 4.8-7.8 s, not 6-12 s
COPY_BUFFER = 1 << 20

Member = tuple[Path, str]  # (file or link on disk, its name in the archive)


@dataclass(frozen=True)
class PackResult:
    path: Path  # the archive written
    bytes: int  # its size
    files: int  # archive members: files and links (the manifest included)
    distributions: tuple[str, ...]  # "name==version" of the packed distributions, sorted by name
    seconds: float


def venv_site_packages(prefix: Path) -> Path:
    """The site-packages folder of the venv at ``prefix``, which must be of the running Python's version
    (the distributions' metadata is read, and their markers evaluated, by this interpreter)."""
    cfg = prefix / "pyvenv.cfg"
    if not cfg.is_file():
        raise PackEnvError(f"{prefix} is not a virtual environment (it has no pyvenv.cfg)")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    version = _cfg_value(cfg, "version") or _cfg_value(cfg, "version_info")
    if version is not None and ".".join(version.split(".")[:2]) != running:
        raise PackEnvError(f"{prefix} is a venv of Python {version}, this is Python {running}: run pack-env "
                           f"with {prefix / 'bin' / 'python'}")
    site = prefix / "lib" / f"python{running}" / "site-packages"
    if not site.is_dir():
        raise PackEnvError(f"{prefix} has no lib/python{running}/site-packages folder")
    return site


def _cfg_value(cfg: Path, key: str) -> str | None:
    for line in cfg.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == key:
            return value.strip()
    return None


def _installed(site_packages: Path) -> dict[str, metadata.Distribution]:
    """The distributions installed in ``site_packages`` by normalized name (the first of duplicates,
    as ``importlib.metadata`` itself picks)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=[str(site_packages)]):
        if dist.name:
            found.setdefault(canonicalize_name(dist.name), dist)
    return found


def _requirements(dist: metadata.Distribution, extras: Collection[str]) -> list[Requirement]:
    """What ``dist`` requires on this interpreter for any of ``extras`` ("" = the base requirements)."""
    wanted = []
    for text in dist.requires or ():
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in extras):
            wanted.append(req)
    return wanted


def runtime_distributions(site_packages: Path, exclude: Iterable[str] = EXCLUDED_DISTRIBUTIONS,
                          ) -> list[metadata.Distribution]:
    """The distributions the ``lime-rank`` distribution needs at run time, installed in ``site_packages``,
    sorted by name: the closure of its requirements (markers evaluated, extras followed), not descending
    into ``exclude`` nor into ``lime-rank`` itself (both left out)."""
    installed = _installed(site_packages)
    project = canonicalize_name(PROJECT_DISTRIBUTION)
    if project not in installed:
        raise PackEnvError(f"{PROJECT_DISTRIBUTION} is not installed in {site_packages} (pip install -e .)")
    skip = {canonicalize_name(name) for name in exclude} | {project}
    done: dict[str, set[str]] = {}  # name -> the extras whose requirements were followed ("" = base)
    todo = [(req, PROJECT_DISTRIBUTION) for req in _requirements(installed[project], [""])]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        new = {"", *req.extras} - done.get(name, set())
        if not new:
            continue
        if name not in installed:
            raise PackEnvError(f"{req.name}, required by {parent}, is not installed in {site_packages}")
        done.setdefault(name, set()).update(new)
        todo += [(sub, installed[name].name) for sub in _requirements(installed[name], new)]
    return [installed[name] for name in sorted(done)]


def _dist_members(dist: metadata.Distribution, site_packages: Path, arc_site: str) -> list[Member]:
    """The files of ``dist`` (its RECORD) that lie in ``site_packages``: console scripts and other files
    recorded outside it (``../../../bin/...``) are left out."""
    label = f"{dist.name} {dist.version}"
    recorded = _record(dist)
    if recorded is None:
        raise PackEnvError(f"{label} in {site_packages} has no RECORD: its files are unknown")
    if _is_editable(dist):
        raise PackEnvError(f"{label} is installed editable in {site_packages}: its code is not in the venv")
    members = []
    for file in recorded:
        path = Path(os.path.normpath(site_packages / file))
        if not path.is_relative_to(site_packages):
            continue
        relative = path.relative_to(site_packages)
        if left_out(relative):
            continue
        if relative.parts[0] in PROJECT_PACKAGES:
            raise PackEnvError(f"{label} installs {relative}, which would mix with the project's own package")
        if not os.path.lexists(path):
            if path.suffix == ".pyc":
                continue  # bytecode pip compiled and recorded; a cleaned-up __pycache__ is harmless
            raise PackEnvError(f"{label}: {path}, listed in its RECORD, does not exist")
        members.append((path, f"{arc_site}/{relative.as_posix()}"))
    return members


def _record(dist: metadata.Distribution) -> list[str] | None:
    """The paths RECORD lists, read here rather than through ``Distribution.files``, which some
    importlib_metadata versions (loaded by Airflow, among others) filter down to the files that exist:
    a file missing from a broken install would then go unnoticed."""
    text = dist.read_text("RECORD")
    return None if text is None else [row[0] for row in csv.reader(text.splitlines()) if row]


def left_out(relative: Path) -> bool:
    """Files no executor needs: test suites (``tests/`` folders) and C headers (``include/`` folders,
    for building extensions or torch.compile's C++ backend, neither of which the pipeline uses).  About
    half of the files (torch's headers alone are 9,400): every driver and executor unpacks the archive
    again for each application, so the count matters."""
    return bool(SKIPPED_FOLDERS & set(relative.parts[:-1]))


def _is_editable(dist: metadata.Distribution) -> bool:
    """Whether pip installed ``dist`` editable (PEP 610 ``direct_url.json``)."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    dir_info = info.get("dir_info") if isinstance(info, dict) else None
    return isinstance(dir_info, dict) and dir_info.get("editable") is True


def project_root() -> Path:
    """The source tree the project packages are copied from: the folder holding ``pipelines/``."""
    return Path(__file__).resolve().parents[2]


def _project_members(root: Path, arc_site: str) -> list[Member]:
    """Every file of the project packages under ``root`` but bytecode (``__pycache__``, ``*.pyc``)."""
    members = []
    for package in PROJECT_PACKAGES:
        if not (root / package / "__init__.py").is_file():
            raise PackEnvError(f"{root / package} is not a package: is {root} the lime-rank source tree?")
        for path in sorted((root / package).rglob("*")):
            relative = path.relative_to(root)
            if path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            members.append((path, f"{arc_site}/{relative.as_posix()}"))
    return members


def _python_links(prefix: Path) -> list[Member]:
    """``bin/python``, ``python3``, ``python3.X`` as they are in the venv (symlinks, kept as symlinks)."""
    if not (prefix / "bin" / "python").exists():
        raise PackEnvError(f"{prefix / 'bin' / 'python'} does not exist (or is a broken link)")
    names = ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")
    return [(prefix / "bin" / name, f"bin/{name}") for name in names if os.path.lexists(prefix / "bin" / name)]


def _git(root: Path, *args: str) -> str | None:
    """The output of ``git -C root ARGS``; None without git or outside a repository."""
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _manifest(dists: Sequence[metadata.Distribution], prefix: Path, root: Path) -> bytes:
    status = _git(root, "status", "--porcelain", "--", *PROJECT_PACKAGES)
    info = {
        "python": _cfg_value(prefix / "pyvenv.cfg", "version") or platform.python_version(),
        "base_python": os.path.realpath(prefix / "bin" / "python"),
        "platform": sysconfig.get_platform(),
        "distributions": {dist.name: dist.version for dist in dists},
        "excluded": [*EXCLUDED_DISTRIBUTIONS, PROJECT_DISTRIBUTION],
        "project_packages": list(PROJECT_PACKAGES),
        "git_commit": _git(root, "rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),  # the project packages differ from the commit
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return (json.dumps(info, indent=2) + "\n").encode()


def archive_compression(out: Path) -> str:
    """``"gzip"`` or ``"none"``, from ``out``'s suffix; another suffix is a :class:`PackEnvError`."""
    for suffix, compression in ARCHIVE_FORMATS.items():
        if out.name.endswith(suffix):
            return compression
    raise PackEnvError(f"{out}: the archive name must end in .tar.gz, .tgz or .zip (for spark.archives), or .tar")


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise PackEnvError(f"{out} is a folder; give the archive's file name")
    if os.path.lexists(out) and not force:
        raise PackEnvError(f"{out} exists; pass force (--force) to replace it")
    if not out.parent.is_dir():
        raise PackEnvError(f"the folder of {out} does not exist")


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids of the packing machine in the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_archive(out: Path, compression: str, compress_level: int, members: Sequence[Member],
                   manifest: bytes) -> None:
    """Write the archive into ``<out>.partial``, then rename it to ``out``: on any failure the partial
    file is removed, and ``out`` is either untouched or the complete archive."""
    partial = out.with_name(out.name + ".partial")
    try:
        if compression == "zip":
            _write_zip(partial, members, manifest)
            os.replace(partial, out)
            return
        with (partial.open("wb") as raw, _compressor(raw, out, compression, compress_level) as stream,
              tarfile.TarFile(out, "w", fileobj=stream, copybufsize=COPY_BUFFER) as tar):
            folders: set[str] = set()
            for path, arcname in members:
                _add_folders(tar, arcname, folders)
                tar.add(path, arcname=arcname, recursive=False, filter=_anonymous)
            info = _anonymous(tarfile.TarInfo(MANIFEST_NAME))
            info.size, info.mtime, info.mode = len(manifest), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(manifest))
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write_zip(partial: Path, members: Sequence[Member], manifest: bytes) -> None:
    """A stored (uncompressed) zip: Spark unpacks it with Java, copying bytes only, and keeps the unix
    modes; a zip holds no symlinks, so ``bin/python*`` become copies of the interpreter they point to
    (the layout of ``python -m venv --copies``: the copy finds ``pyvenv.cfg`` one folder up)."""
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, arcname in members:
            archive.write(path, arcname)  # follows links: the file's bytes and mode
        archive.writestr(zipfile.ZipInfo(MANIFEST_NAME, time.gmtime()[:6]), manifest)


def _add_folders(tar: tarfile.TarFile, arcname: str, listed: set[str]) -> None:
    """Entries for the folders of ``arcname`` not yet in the archive, parents first: ``tar`` creates
    missing folders itself, but Hadoop's Java untar (Spark's for ``.tar``) creates the folder of a file,
    not that of a symlink (``bin/python``: NoSuchFileException without a ``bin/`` entry)."""
    missing = []
    folder = posixpath.dirname(arcname)
    while folder and folder not in listed:
        listed.add(folder)
        missing.append(folder)
        folder = posixpath.dirname(folder)
    for name in reversed(missing):
        info = _anonymous(tarfile.TarInfo(name))
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(info)


def _compressor(raw: io.BufferedWriter, out: Path, compression: str, level: int) -> io.BufferedIOBase:
    if compression == "gzip":  # what tarfile.open(..., "w:gz") does, with the archive's name (not the partial
        # file's) in the gzip header
        return gzip.GzipFile(filename=out.name, mode="wb", compresslevel=level, fileobj=raw)
    return raw


def _unique(members: Iterable[Member]) -> list[Member]:
    """Each archive name once (two distributions may record the same file), the first kept."""
    seen: dict[str, Path] = {}
    for path, arcname in members:
        seen.setdefault(arcname, path)
    return [(path, arcname) for arcname, path in seen.items()]


def pack_environment(out: Path, *, prefix: Path = Path(sys.prefix), force: bool = False,
                     compress_level: int = 1) -> PackResult:
    """Pack the venv at ``prefix`` (its runtime distributions, see :func:`runtime_distributions`) and the
    project packages of this source tree into ``out`` (``.tar.gz``/``.tgz``: gzip at ``compress_level``,
    the smallest to ship; ``.zip``: stored, the cheapest for Spark to unpack; ``.tar``: for ``tar -xf``).
    Refuses an existing ``out`` unless ``force``; nothing is left at ``out`` (nor ``out.partial``) when
    it fails."""
    start = time.perf_counter()
    out, prefix = out.absolute(), prefix.absolute()
    compression = archive_compression(out)
    if compression == "gzip" and not 0 <= compress_level <= 9:
        raise PackEnvError(f"gzip compression level must be 0..9, got {compress_level}")
    _check_out(out, force)
    site = Path(os.path.normpath(venv_site_packages(prefix)))
    dists = runtime_distributions(site)
    arc_site = site.relative_to(prefix).as_posix()
    members = [(prefix / "pyvenv.cfg", "pyvenv.cfg"), *_python_links(prefix)]
    for dist in dists:
        members += _dist_members(dist, site, arc_site)
    members = _unique([*members, *_project_members(project_root(), arc_site)])
    size = sum(path.lstat().st_size for path, _ in members)
    log.info("packing %d files (%.0f MB) of %d distributions and the project into %s", len(members),
             size / 1e6, len(dists), out)
    _write_archive(out, compression, compress_level, members, _manifest(dists, prefix, project_root()))
    return PackResult(path=out, bytes=out.stat().st_size, files=len(members) + 1,
                      distributions=tuple(f"{dist.name}=={dist.version}" for dist in dists),
                      seconds=time.perf_counter() - start)


def spark_settings(archive: Path) -> dict[str, str]:
    """The Spark settings that make executors run their Python workers from ``archive`` (a ``.tar.gz``,
    ``.tgz`` or ``.zip``; Spark cannot use a ``.tar``: see the module's docstring)."""
    if archive_compression(archive) not in SPARK_FORMATS:
        raise PackEnvError(f"{archive}: Spark unpacks a .tar of spark.archives with a Java untar that refuses "
                           f"the python symlinks and drops executable bits; pack a .tar.gz or .zip for spark.archives")
    return {"spark.archives": f"{archive.absolute()}#{ARCHIVE_ALIAS}", "spark.pyspark.python": EXECUTOR_PYTHON}
