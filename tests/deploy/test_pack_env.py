"""``lime-rank pack-env``: the executors' environment as one archive for ``spark.archives``.

The fast tests pack a small fake venv (made of dist-info folders, with the real interpreter linked
in); the slow ones pack the dev venv itself (~1.4 GB): once to a ``.tar`` unpacked here and run with
a clean environment, once to a ``.tar.gz`` that Spark ships to a ``local-cluster`` executor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.cli import main as cli
from pipelines.deploy import pack_env
from pipelines.deploy.pack_env import (
    MANIFEST_NAME,
    left_out,
    pack_environment,
    runtime_distributions,
    spark_settings,
    venv_site_packages,
)
from pipelines.errors import PackEnvError

REPO = Path(__file__).resolve().parents[2]
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
SITE = f"lib/{PY}/site-packages"
# the tests that pack the interpreter's own venv (the dev venv: make setup)
in_a_venv = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the tests do not run from a venv")
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # + HOME; no PYTHONPATH, no VIRTUAL_ENV

# what the probe imports in the unpacked environment; it prints each module's file (None: not importable)
PROBE = """
import importlib, json, sys
found = {"executable": sys.executable, "prefix": sys.prefix}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.import_module(name).__file__
    except ImportError:
        found[name] = None
print(json.dumps(found))
"""


def add_dist(site: Path, name: str, files: dict[str, str], requires: tuple[str, ...] = (),
             direct_url: str | None = None) -> None:
    """A distribution as pip leaves it: its files, and a .dist-info with METADATA and RECORD."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    extra = {"direct_url.json": direct_url} if direct_url else {}
    for rel, text in {**files, **{f"{info.name}/{k}": v for k, v in extra.items()}}.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    record = [*files, *(f"{info.name}/{k}" for k in extra), f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in record))


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv of this Python whose lime-rank needs alpha, which needs beta[fast] (so gamma), plus
    pyspark and airflow (with their own dependencies), a dev extra and an unrelated distribution."""
    prefix = tmp_path / "venv"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text(f"home = {Path(sys.base_prefix) / 'bin'}\ninclude-system-site-packages = "
                                       f"false\nversion = {sys.version.split()[0]}\n")
    (prefix / "bin" / "python3").symlink_to(os.path.realpath(sys.executable))
    for link in ("python", PY):
        (prefix / "bin" / link).symlink_to("python3")
    site = prefix / SITE
    add_dist(site, "lime-rank", {"__editable__.lime_rank-1.0.pth": "import finder\n"},
             ("alpha>=1", "pyspark==4.2.0", "apache-airflow", 'devtool; extra == "dev"'))
    add_dist(site, "alpha", {"alpha/__init__.py": "NAME = 'alpha'\n", "../../../bin/alpha": "#!script\n",
                             "alpha/__pycache__/__init__.cpython-311.pyc": ""},
             ("beta[fast]", 'never; python_version < "3"'))
    add_dist(site, "beta", {"beta.py": ""}, ('gamma; extra == "fast"',))
    add_dist(site, "gamma", {"gamma/__init__.py": "", "gamma/data.bin": "payload"})
    add_dist(site, "pyspark", {"pyspark/__init__.py": ""}, ("py4j",))
    add_dist(site, "apache-airflow", {"airflow/__init__.py": ""}, ("sqlalchemy",))
    for name in ("py4j", "sqlalchemy", "devtool", "unrelated"):
        add_dist(site, name, {f"{name}.py": ""})
    return prefix


def names(tar: tarfile.TarFile) -> set[str]:
    return {member.name for member in tar.getmembers()}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


@in_a_venv
def test_the_closure_of_the_dev_venv() -> None:
    site = venv_site_packages(Path(sys.prefix))
    found = {dist.metadata["Name"].lower() for dist in runtime_distributions(site)}
    assert {"torch", "numpy", "pyarrow", "pandas", "deltalake"} <= found
    # excluded, their own dependencies never visited, the project itself, dev tools
    assert not found & {"pyspark", "py4j", "apache-airflow", "apache-airflow-providers-apache-spark", "sqlalchemy",
                        "lime-rank", "pytest", "mypy"}


def test_the_closure_follows_extras_and_markers_and_skips_the_excluded(venv: Path) -> None:
    found = [dist.metadata["Name"] for dist in runtime_distributions(venv / SITE)]
    assert found == ["alpha", "beta", "gamma"]


def test_a_fake_venv_is_packed_with_its_links_its_runtime_files_and_the_project(venv: Path, tmp_path: Path) -> None:
    result = pack_environment(tmp_path / "env.tar.gz", prefix=venv)
    assert result.distributions == ("alpha==1.0", "beta==1.0", "gamma==1.0")
    with tarfile.open(result.path) as tar:
        members = names(tar)
        assert tar.getmember("bin/python").issym() and tar.getmember("bin/python").linkname == "python3"
        assert tar.getmember("bin/python3").linkname == os.path.realpath(sys.executable)
        assert tar.getmember("bin").isdir()  # Hadoop's Java untar needs it before the links
        files = [member for member in tar.getmembers() if not member.isdir()]
        manifest_file = tar.extractfile(MANIFEST_NAME)
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
    assert {"pyvenv.cfg", f"bin/{PY}", f"{SITE}/alpha/__init__.py", f"{SITE}/beta.py", f"{SITE}/gamma/data.bin",
            f"{SITE}/alpha-1.0.dist-info/RECORD", f"{SITE}/pipelines/deploy/pack_env.py", f"{SITE}/jobs/cli.py",
            f"{SITE}/lime_model/__init__.py"} <= members
    assert [m for m in members if m.startswith("bin/") and m not in ("bin", "bin/python", "bin/python3",
                                                                      f"bin/{PY}")] == []
    for absent in ("pyspark", "py4j", "airflow", "sqlalchemy", "devtool", "unrelated", "__editable__", "lime_rank"):
        assert not [m for m in members if m.startswith(f"{SITE}/{absent}")], absent
    assert not [m for m in members if m.startswith(f"{SITE}/pipelines/") and "__pycache__" in m]
    assert result.files == len(files)
    assert manifest["distributions"] == {"alpha": "1.0", "beta": "1.0", "gamma": "1.0"}
    assert manifest["python"] == sys.version.split()[0] and "git_commit" in manifest
    assert not (tmp_path / "env.tar.gz.partial").exists()


def test_the_unpacked_fake_venv_runs_its_packages_with_the_real_interpreter(venv: Path, tmp_path: Path) -> None:
    archive = pack_environment(tmp_path / "env.tar", prefix=venv).path
    with tarfile.open(archive) as tar:
        # "data" refuses bin/python3, an absolute link to the base interpreter: "tar" keeps it
        tar.extractall(tmp_path / "env", filter="tar")
    found = run_probe(tmp_path / "env", tmp_path, ["alpha", "gamma", "pipelines.errors", "pyspark"])
    assert found["prefix"] == str(tmp_path / "env")
    assert found["alpha"] == str(tmp_path / "env" / SITE / "alpha" / "__init__.py")
    assert found["pipelines.errors"] == str(tmp_path / "env" / SITE / "pipelines" / "errors.py")
    assert found["pyspark"] is None


def test_bad_suffix_existing_archive_and_non_venv_prefix_write_nothing(venv: Path, tmp_path: Path) -> None:
    with pytest.raises(PackEnvError, match=r"must end in \.tar\.gz, \.tgz or \.zip"):
        pack_environment(tmp_path / "env.rar", prefix=venv)
    assert_nothing_written(tmp_path / "env.zip")
    with pytest.raises(PackEnvError, match=re.escape(f"{tmp_path} is not a virtual environment")):
        pack_environment(tmp_path / "env.tar", prefix=tmp_path)
    assert_nothing_written(tmp_path / "env.tar")
    existing = tmp_path / "old.tar"
    existing.write_text("old")
    with pytest.raises(PackEnvError, match="exists; pass force"):
        pack_environment(existing, prefix=venv)
    assert existing.read_text() == "old"
    assert not (tmp_path / "old.tar.partial").exists()
    assert tarfile.is_tarfile(pack_environment(existing, prefix=venv, force=True).path)


def test_a_venv_of_another_python_is_refused(venv: Path, tmp_path: Path) -> None:
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.9.18\n")
    with pytest.raises(PackEnvError, match=r"a venv of Python 3\.9\.18"):
        pack_environment(tmp_path / "env.tar", prefix=venv)
    assert_nothing_written(tmp_path / "env.tar")


def test_a_failure_while_writing_leaves_no_partial_file_and_the_old_archive(venv: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "env.tar"
    out.write_text("old")

    def disk_full(*args: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(pack_env, "_add_folders", disk_full)
    with pytest.raises(OSError, match="No space left"):
        pack_environment(out, prefix=venv, force=True)
    assert out.read_text() == "old"
    assert not (tmp_path / "env.tar.partial").exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda site: (site / "gamma" / "data.bin").unlink(), "data.bin, listed in its RECORD, does not exist"),
    (lambda site: (site / "gamma-1.0.dist-info" / "RECORD").unlink(), "gamma 1.0 in .* has no RECORD"),
    (lambda site: shutil.rmtree(site / "beta-1.0.dist-info"), "beta, required by alpha, is not installed"),
    (lambda site: (site / "alpha-1.0.dist-info" / "direct_url.json").write_text(
        '{"url": "file:///src/alpha", "dir_info": {"editable": true}}'), "alpha 1.0 is installed editable"),
])
def test_distributions_that_cannot_be_packed_are_named(venv: Path, tmp_path: Path, change: Callable[[Path], object],
                                                       message: str) -> None:
    change(venv / SITE)
    out = tmp_path / "env.tar"
    with pytest.raises(PackEnvError, match=message):
        pack_environment(out, prefix=venv)
    assert_nothing_written(out)


def test_missing_bytecode_is_not_an_error(venv: Path, tmp_path: Path) -> None:
    (venv / SITE / "alpha" / "__pycache__" / "__init__.cpython-311.pyc").unlink()
    with tarfile.open(pack_environment(tmp_path / "env.tar", prefix=venv).path) as tar:
        assert f"{SITE}/alpha/__init__.py" in names(tar)


def test_a_distribution_that_installs_a_project_package_is_refused(venv: Path, tmp_path: Path) -> None:
    (venv / SITE / "gamma-1.0.dist-info" / "RECORD").write_text("jobs/__init__.py,,\n")
    (venv / SITE / "jobs").mkdir()
    (venv / SITE / "jobs" / "__init__.py").write_text("")
    with pytest.raises(PackEnvError, match=r"gamma 1\.0 installs jobs/__init__\.py"):
        pack_environment(tmp_path / "env.tar", prefix=venv)


def test_a_zip_is_stored_with_copies_of_the_interpreter_and_the_modes(venv: Path, tmp_path: Path) -> None:
    result = pack_environment(tmp_path / "env.zip", prefix=venv)
    interpreter = Path(os.path.realpath(sys.executable)).read_bytes()
    with zipfile.ZipFile(result.path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        for name in ("bin/python", "bin/python3", f"bin/{PY}"):
            assert archive.read(name) == interpreter  # a copy: a zip holds no links
            assert infos[name].external_attr >> 16 & 0o777 == 0o755  # Spark's unzip keeps the mode
        assert {info.compress_type for info in infos.values()} == {zipfile.ZIP_STORED}
        assert {f"{SITE}/alpha/__init__.py", f"{SITE}/pipelines/deploy/pack_env.py", MANIFEST_NAME} <= set(infos)
        archive.extractall(tmp_path / "env")
    for name in ("python", "python3", PY):
        (tmp_path / "env" / "bin" / name).chmod(0o755)  # zipfile drops modes; Spark's unzip does not
    found = run_probe(tmp_path / "env", tmp_path, ["alpha", "pipelines.errors"])
    assert found["prefix"] == str(tmp_path / "env")  # the copy found pyvenv.cfg: the venv is active
    assert found["alpha"] == str(tmp_path / "env" / SITE / "alpha" / "__init__.py")


def test_test_suites_and_c_headers_are_left_out() -> None:
    assert left_out(Path("torch/include/ATen/core/Tensor.h"))
    assert left_out(Path("pandas/tests/frame/test_api.py"))
    assert not left_out(Path("torch/testing/__init__.py"))
    assert not left_out(Path("torch/lib/libtorch_cpu.so"))
    assert not left_out(Path("include.py"))


def test_spark_settings_ship_a_tar_gz_or_a_zip_and_refuse_a_tar(tmp_path: Path) -> None:
    assert spark_settings(tmp_path / "env.tgz") == {"spark.archives": f"{tmp_path}/env.tgz#environment",
                                                     "spark.pyspark.python": "./environment/bin/python"}
    assert spark_settings(tmp_path / "env.zip")["spark.archives"] == f"{tmp_path}/env.zip#environment"
    with pytest.raises(PackEnvError, match="Java untar"):
        spark_settings(tmp_path / "env.tar")


def test_cli_prints_the_archive_and_the_spark_settings(venv: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "env.tar.gz"
    assert cli(["pack-env", "--out", str(out), "--prefix", str(venv), "--compress-level", "9"]) == 0
    printed = capsys.readouterr().out
    assert f"packed 3 distributions and the project into {out}" in printed
    assert f"--conf spark.archives={out}#environment" in printed
    assert "--conf spark.pyspark.python=./environment/bin/python" in printed
    assert cli(["pack-env", "--out", str(out), "--prefix", str(venv)]) == 1  # exists, no --force
    assert cli(["pack-env", "--out", str(tmp_path / "env.tar"), "--prefix", str(venv)]) == 0
    assert "tar -xf" in capsys.readouterr().out


def run_probe(env_dir: Path, cwd: Path, modules: list[str], pythonpath: str | None = None) -> dict[str, str | None]:
    """Import ``modules`` with ``env_dir/bin/python`` in a clean environment; their files by name."""
    env = {**CLEAN_ENV, "HOME": str(cwd), **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    done = subprocess.run([str(env_dir / "bin" / "python"), "-c", PROBE, *modules], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def spark_python_path() -> str:
    """What Spark puts on its Python workers' PYTHONPATH: pyspark.zip and py4j's zip of its python/lib."""
    spec = importlib.util.find_spec("pyspark")
    assert spec is not None and spec.origin is not None
    lib = Path(spec.origin).parent / "python" / "lib"
    return os.pathsep.join(str(path) for path in [lib / "pyspark.zip", *sorted(lib.glob("py4j-*-src.zip"))])
