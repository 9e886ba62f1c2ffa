"""The container image: the Dockerfile built by buildah and the image run, as a user would.

No Docker engine or registry is reachable here, so:

- the base image is Debian bookworm with python3, python3-venv, python3-pip, python-is-python3
  and ca-certificates, made by ``mmdebstrap`` and passed through the Dockerfile's ``PYTHON_IMAGE``
  build argument in place of the official Python image. It is kept between runs in the tests'
  buildah store under ``~/.cache/okx-loan-exporter-tests/`` (``$XDG_CACHE_HOME``), keyed by what
  makes it (packages, mirror, mmdebstrap's version) and the ISO week, so it is remade weekly;
- the exporter's image is built for real on every run (``buildah bud --isolation chroot``) from a
  copy of the checkout into which secrets and stray files were planted, so that .dockerignore is
  tested too. The machine's CA bundle is bind-mounted into the build (the package index is
  reached through a proxy whose CA is in it); the proxy variables pass through (buildah's
  ``--http-proxy`` default);
- the image is run by ``buildah run``, which starts the image's ENTRYPOINT with its CMD, USER and
  ENV from the image's own configuration (the network is the host's: the exporter listens on a
  free loopback port instead of 9855), and by ``chroot`` into its read-only mounted root file
  system, as Kubernetes runs it with ``readOnlyRootFilesystem``.

It needs root (buildah's chroot isolation and mmdebstrap's root mode), buildah and mmdebstrap
(scripts/install-test-deps installs them). The image's size is printed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_support import copy_checkout
from e2e_support import free_port, parse_samples, show, wait_for
from tooling import in_ci, require_binary

import okx_loan_exporter

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "okx-loan-exporter-tests"
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
#: Like the official slim images: no documentation, manual pages or translations.
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
)
BASE_REPOSITORY = "localhost/okx-loan-exporter-test-base"
IMAGE = "localhost/okx-loan-exporter-test:latest"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DOCKERFILE_PORT = 9855
#: Planted in the build context; must never reach a layer.
CANARY = "okx-canary-7d41c2e9-must-never-be-in-an-image"
PLANTED = {
    "examples/secrets/okx_api_key": CANARY,
    "examples/secrets/okx_secret_key": CANARY,
    ".env": f"OKX_API_KEY={CANARY}\n",
    "exporter.key": CANARY,
    "examples/config.local.yml": f"accounts:\n  - name: main\n    api_key: {CANARY}\n",
    ".venv/pyvenv.cfg": f"home = /usr/bin\n# {CANARY}\n",
    ".git/config": f"[remote]\n  url = https://{CANARY}@example.invalid/\n",
}


class Buildah:
    """buildah with the tests' own store, so nothing touches the machine's images."""

    def __init__(self, root: Path, runroot: Path) -> None:
        self.base = ["buildah", "--root", str(root), "--runroot", str(runroot)]

    def argv(self, *args: str) -> list[str]:
        return [*self.base, *args]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, f"buildah {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def has_image(self, name: str) -> bool:
        return self.run("inspect", "--type", "image", name, timeout=60).returncode == 0

    def image_config(self, name: str) -> dict[str, Any]:
        """The Docker-format configuration of image ``name`` (ENTRYPOINT, CMD, USER, ...)."""
        inspected = json.loads(self("inspect", "--type", "image", name, timeout=60))
        return dict(inspected["Docker"]["config"])


def apt_proxy_options() -> list[str]:
    """The host's apt proxy settings, as mmdebstrap --aptopt arguments (none here by default)."""
    if not shutil.which("apt-config"):
        return []
    dump = subprocess.run(
        ["apt-config", "dump"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    return [
        f"--aptopt={line.rstrip(';')}"
        for line in dump.splitlines()
        if re.match(r"Acquire::https?::Proxy ", line)
    ]


def base_image(buildah: Buildah, work: Path) -> str:
    """The Debian base image with Python, made by mmdebstrap unless this week's is in the store."""
    mmdebstrap = require_binary("mmdebstrap")
    version = subprocess.run(
        [mmdebstrap, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    year, week, _ = datetime.date.today().isocalendar()
    aptopts = apt_proxy_options()
    recipe = [BASE_SUITE, BASE_MIRROR, *BASE_PACKAGES, *BASE_DPKG_OPTIONS, *aptopts, version]
    key = hashlib.sha256(json.dumps([recipe, year, week]).encode()).hexdigest()[:16]
    name = f"{BASE_REPOSITORY}:{key}"
    if buildah.has_image(name):
        return name
    tarball = work / "base.tar"
    made = subprocess.run(
        [
            mmdebstrap,
            "--variant=apt",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
            *aptopts,
            BASE_SUITE,
            str(tarball),
            BASE_MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr[-4000:]}"
    container = buildah("from", "scratch").strip()
    try:
        buildah("add", container, str(tarball), "/")
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd",
            "python3",
            container,
        )
        buildah("commit", "--rm", container, name)
    finally:
        buildah.run("rm", container)
    tarball.unlink()
    # Older bases (other weeks, other recipes) are dropped from the store.
    listed = buildah("images", "--json")
    for image in json.loads(listed or "[]"):
        for old in image.get("names") or []:
            if old.startswith(f"{BASE_REPOSITORY}:") and old != name:
                buildah.run("rmi", old)
    return name


def plant(context: Path) -> None:
    """Secrets and stray files a careless checkout could hold, none of which may be shipped."""
    for relative, text in PLANTED.items():
        path = context / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def excluded_files(context: Path) -> list[str]:
    """The context's files that .dockerignore keeps out: planted ones, tests, examples, ..."""
    admitted = {
        line[1:].strip().rstrip("/")
        for line in (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    return sorted(
        path.relative_to(context).as_posix()
        for path in context.rglob("*")
        if path.is_file() and path.relative_to(context).parts[0] not in admitted
    )


@dataclass
class Built:
    buildah: Buildah
    image: str
    base: str
    config: dict[str, Any]
    context: Path
    work: Path
    build_log: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Built:
    require_binary("buildah")
    require_binary("mmdebstrap")
    if os.geteuid() != 0:
        message = "building and running the image needs root (buildah --isolation chroot)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("image")
    CACHE.mkdir(parents=True, exist_ok=True)
    buildah = Buildah(CACHE / "buildah-storage", work / "runroot")
    base = base_image(buildah, work)
    context = copy_checkout(work / "context")
    plant(context)
    build = buildah.run(
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",  # keeps HEALTHCHECK, which OCI image configs cannot hold
        "--pull=false",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"VERSION={okx_loan_exporter.__version__}",
        "--volume",
        f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--tag",
        IMAGE,
        str(context),
        timeout=400,
    )
    assert build.returncode == 0, f"buildah bud failed:\n{build.stdout[-6000:]}{build.stderr}"
    buildah.run("rmi", "--prune")  # the previous run's image, now untagged
    return Built(buildah, IMAGE, base, buildah.image_config(IMAGE), context, work, build.stdout)


@pytest.fixture
def container(built: Built) -> Iterator[str]:
    """A working container of the image, removed after the test."""
    name = f"okx-image-test-{uuid.uuid4().hex[:12]}"
    built.buildah("from", "--pull=false", "--name", name, built.image)
    try:
        yield name
    finally:
        built.buildah.run("rm", name)


def run_in(built: Built, container: str, command: Sequence[str]) -> list[str]:
    """``buildah run`` of ``command`` as the image's USER, with the image's ENV."""
    return built.buildah.argv(
        "run", "--isolation", "chroot", "--user", built.config["User"], container, "--", *command
    )


def entrypoint_command(config: dict[str, Any], port: int, *extra: str) -> list[str]:
    """ENTRYPOINT + CMD, the CMD's listen address moved from :9855 to 127.0.0.1:``port``."""
    cmd = list(config["Cmd"])
    moved = [
        f"--web.listen-address=127.0.0.1:{port}" if arg.startswith("--web.listen-address=") else arg
        for arg in cmd
    ]
    assert moved != cmd, f"the image's CMD sets no --web.listen-address: {cmd}"
    return [*config["Entrypoint"], *moved, *extra]


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def uids(pid: int) -> list[int]:
    """Real, effective, saved and file-system UID of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return [int(field) for field in line.split()[1:]]


def exporter_pid(process: subprocess.Popen[bytes]) -> int:
    """The one Python process below ``process`` that runs okx-loan-exporter."""
    found = []
    for pid in descendants(process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            exe = Path(os.readlink(f"/proc/{pid}/exe")).name
        except OSError:
            continue
        if b"okx-loan-exporter" in cmdline and exe.startswith("python"):
            found.append(pid)
    assert len(found) == 1, f"expected one exporter process below {process.pid}: {found}"
    return found[0]


def wait_for_metrics(url: str, process: subprocess.Popen[bytes], log: Path) -> str:
    def serving() -> str | None:
        if process.poll() is not None:
            pytest.fail(
                f"the image's exporter exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            response = httpx.get(f"{url}/metrics", timeout=2)
        except httpx.HTTPError:
            return None
        return response.text if "okx_loan_up{" in response.text else None

    return wait_for(f"{url}/metrics", serving, 30, details=log.read_text)


def healthcheck(built: Built, container: str, port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, in its own container, pointed at ``port``."""
    test = built.config["Healthcheck"]["Test"]
    assert test[0] in {"CMD", "CMD-SHELL"}, test
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    command = [a.replace(f":{DOCKERFILE_PORT}/", f":{port}/") for a in command]
    return subprocess.run(
        run_in(built, container, command), capture_output=True, text=True, timeout=60, check=False
    )


# --------------------------------------------------------------------------------------------------


def test_the_image_reports_its_version(built: Built, container: str) -> None:
    assert built.config["User"] == "65532:65532"
    result = subprocess.run(
        run_in(built, container, [*built.config["Entrypoint"], "--version"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"okx-loan-exporter {okx_loan_exporter.__version__}"
    labels = built.config["Labels"]
    assert labels["org.opencontainers.image.version"] == okx_loan_exporter.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_image_serves_the_demo_as_uid_65532_and_passes_its_healthcheck(
    built: Built, container: str
) -> None:
    port = free_port()
    log = built.work / f"demo-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            run_in(built, container, entrypoint_command(built.config, port, "--demo")),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        text = wait_for_metrics(f"http://127.0.0.1:{port}", process, log)
        samples = parse_samples(text)
        up = {
            dict(key)["account"]: v for (name, key), v in samples.items() if name == "okx_loan_up"
        }
        assert len(up) >= 3 and set(up.values()) == {1.0}, up
        # The process that serves is the venv's Python, running as the image's user.
        exporter = exporter_pid(process)
        assert uids(exporter) == [65532] * 4
        # HEALTHCHECK passes against it, from a second container of the image.
        name = f"okx-image-health-{uuid.uuid4().hex[:12]}"
        built.buildah("from", "--pull=false", "--name", name, built.image)
        try:
            healthy = healthcheck(built, name, port)
            assert healthy.returncode == 0, healthy.stderr
            # SIGTERM stops the exporter cleanly (exit 0), as `docker stop` would.
            os.kill(exporter, 15)
            assert process.wait(15) == 0, log.read_text()
            # The same command with nothing listening fails (Python's exit code for an uncaught
            # exception; buildah's chroot runner may lose the traceback's text, so only the code
            # is checked).
            dead = healthcheck(built, name, port)
            assert dead.returncode == 1, "the HEALTHCHECK passes with nothing listening"
        finally:
            built.buildah.run("rm", name)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(15)


def test_the_venv_is_read_only_for_the_images_user(built: Built, container: str) -> None:
    """A compromised exporter cannot rewrite its own code: /opt/venv belongs to root."""
    probe = (
        "import okx_loan_exporter, pathlib; pathlib.Path(okx_loan_exporter.__file__).write_text('')"
    )
    result = subprocess.run(
        run_in(built, container, ["python", "-c", probe]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "PermissionError" in result.stderr, result.stderr


def test_the_image_runs_on_a_read_only_root_filesystem(built: Built, container: str) -> None:
    """As the Kubernetes Deployment runs it (readOnlyRootFilesystem, UID 65532): serves the demo."""
    require_binary("unshare")
    rootfs = built.buildah("mount", container).strip()
    port = free_port()
    config = built.config
    env = ["/usr/bin/env", "-i", *config["Env"]]
    command = entrypoint_command(config, port, "--demo")
    script = (
        'set -e; R="$1"; shift; mount --bind "$R" "$R"; mount -t proc proc "$R/proc"; '
        'mount -o remount,bind,ro "$R"; exec chroot --userspec=65532:65532 "$R" "$@"'
    )
    log = built.work / f"readonly-{port}.log"
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--fork",
                    "/bin/sh",
                    "-c",
                    script,
                    "sh",
                    rootfs,
                    *env,
                    *command,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_metrics(f"http://127.0.0.1:{port}", process, log)
            assert httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).status_code == 200
            exporter = exporter_pid(process)
            assert uids(exporter) == [65532] * 4
            os.kill(exporter, 15)
            assert process.wait(15) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(15)
        assert "Read-only file system" not in log.read_text()
    finally:
        built.buildah.run("umount", container)


def layer_files(built: Built) -> tuple[list[Path], int]:
    """The image's layers as tar files (uncompressed), and how many of them are the base's."""
    target = built.work / "pushed"
    if not target.exists():
        built.buildah("push", "--disable-compression", built.image, f"dir:{target}")
    manifest = json.loads((target / "manifest.json").read_text())
    layers = [target / layer["digest"].split(":", 1)[1] for layer in manifest["layers"]]
    base_inspect = json.loads(built.buildah("inspect", "--type", "image", built.base))
    return layers, len(base_inspect["Docker"]["rootfs"]["diff_ids"])


def contains(path: Path, needle: bytes) -> bool:
    """Whether file ``path`` holds ``needle``, read in chunks (layers are large)."""
    tail = b""
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


def test_no_secret_or_repository_file_is_in_any_layer(
    built: Built, request: pytest.FixtureRequest
) -> None:
    layers, base_count = layer_files(built)
    assert base_count >= 1 and len(layers) > base_count, (base_count, layers)
    # The planted secrets were in the build context, so .dockerignore had something to keep out.
    assert contains(built.context / "examples/secrets/okx_api_key", CANARY.encode())
    for layer in layers:
        assert not contains(layer, CANARY.encode()), f"a planted secret is in layer {layer.name}"
    excluded = excluded_files(built.context)
    assert {"tests/test_image.py", ".env", "examples/secrets/okx_api_key"} <= set(excluded)
    shipped: list[str] = []
    for layer in layers[base_count:]:
        with tarfile.open(layer) as tar:
            shipped += [member.name.lstrip("./") for member in tar.getmembers()]
    package = "opt/venv/lib/python3.11/site-packages/okx_loan_exporter/"
    assert f"{package}cli.py" in shipped, "the exporter's layer does not hold the exporter"
    leaked = [
        name
        for name in shipped
        if name.startswith(("src/", "wheels/", "root/.cache"))
        or name.endswith(".whl")
        or any(name == path or name.endswith(f"/{path}") for path in excluded)
    ]
    assert not leaked, f"files of the build context or the build stage in the image: {leaked[:20]}"
    sizes = [layer.stat().st_size for layer in layers]
    base_size, own_size = sum(sizes[:base_count]), sum(sizes[base_count:])
    show(
        request,
        f"\nimage size (uncompressed layers): {(base_size + own_size) / 1e6:.1f} MB = "
        f"base {base_size / 1e6:.1f} MB (mmdebstrap bookworm + python3) + "
        f"exporter {own_size / 1e6:.1f} MB\n",
    )
