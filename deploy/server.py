"""``mmcls serve``: Triton Inference Server (the binary the ``nvidia-pytriton`` wheel ships) serving ``mmcls``.

The server runs the Python-backend model of :mod:`mmcls.deploy.triton_model` from a model repository written
into a private workspace. PyTriton's own Python API is not used for the model (see that module for why), but
its wheel is what provides ``tritonserver``, the Python backend and the backend stub built for this Python.

Traps handled here (measured, see DESIGN.md):

* Under a pyenv Python the backend stub loads the system ``libpython`` instead of the running interpreter's
  and fails with ``'_thread.RLock' object has no attribute '_recursion_count'``: ``LD_LIBRARY_PATH`` starts
  with this interpreter's ``LIBDIR``.
* The stub finds its Python environment through ``PATH``: this environment's ``bin`` goes first.
* The workspace (repository + backend folder) lives under ``PYTRITON_HOME`` when set (a writable folder),
  else the system temp folder, and is removed on exit.
* SIGTERM and SIGINT both stop the server cleanly: Triton is asked to stop (it unloads the model and frees
  the ports), then the workspace is removed; a second start on the same ports works.
* ``--validate-http``: :mod:`mmcls.deploy.http_guard` takes the public HTTP port (bound first, before Triton
  starts, so the readiness probe goes through it) and Triton's own HTTP front end a free loopback port; the
  guard stops first on the way out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmcls.deploy.ports import LOOPBACK, free_ports
from mmcls.deploy.triton_repo import MODEL_NAME, TritonModelOptions, write_model_config
from mmcls.errors import MmclsError

if TYPE_CHECKING:
    from mmcls.deploy.http_guard import HttpGuard

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0


class ServeError(MmclsError, RuntimeError):
    """The server could not start (missing package, port in use, model failed to load): names the cause."""


@dataclass
class ServeOptions:
    backend: str | None = None
    precision: str | None = None
    device: str = "auto"
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 64
    max_queue_delay_us: int = TritonModelOptions.max_queue_delay_us
    instances: int = 1
    threads: int | None = None
    decode_threads: int | None = None
    start_timeout_s: float = 300.0
    # input ``video`` (an encoded video file): refused above this many bytes or seconds with a 400
    max_video_bytes: int = TritonModelOptions.max_video_bytes
    max_video_seconds: float = TritonModelOptions.max_video_seconds
    # the public HTTP port served by the validating pass-through of mmcls.deploy.http_guard
    validate_http: bool = False

    def __post_init__(self) -> None:
        """Settings checked before the server starts (Triton would only fail later, inside the model)."""
        if self.max_video_bytes < 1:
            raise ServeError(f"--max-video-bytes={self.max_video_bytes}: must be at least 1")
        if not self.max_video_seconds > 0:
            raise ServeError(f"--max-video-seconds={self.max_video_seconds}: must be above 0")


def triton_distribution() -> Path:
    """The ``tritonserver`` folder inside the installed ``nvidia-pytriton`` wheel."""
    try:
        import pytriton
    except ImportError:
        raise ServeError(
            "mmcls serve needs nvidia-pytriton (it ships tritonserver): pip install 'mmcls[serve]'"
        ) from None
    dist = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServeError(f"{dist}: nvidia-pytriton is installed without its tritonserver binary")
    return dist


def triton_libs() -> Path:
    """The shared libraries the wheel bundles for tritonserver and the stub (CUDA runtime, ...).

    Not ``pytriton.utils.distribution.get_libs_path()``: it takes a package seen through another environment's
    site-packages (an environment layered over a shared one) for an editable install and answers a wrong path.
    """
    dist = triton_distribution()
    wheel_libs = dist.parent.parent / "nvidia_pytriton.libs"
    return wheel_libs if wheel_libs.is_dir() else dist / "external_libs"


def is_triton_repository(path: Path) -> bool:
    """A folder written by ``mmcls export --format triton`` (served as it is)."""
    return (path / MODEL_NAME / "config.pbtxt").is_file()


def prepare_workspace(model: Path, options: ServeOptions) -> tuple[Path, Path]:
    """``(workspace, repository)``: a fresh folder with a Python backend whose stub matches this interpreter,
    and the model repository: the given one for a Triton repository, else one written into the workspace."""
    from mmcls.deploy.artifact import is_artifact, load_assets
    from mmcls.deploy.predictor import check_backend
    from mmcls.models.model_dir import resolve_model_dir

    home = os.environ.get("PYTRITON_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix="mmcls-serve-", dir=home or None))
    try:
        _prepare_python_backend(workspace / "backends" / "python")
        model = model.resolve()
        if is_triton_repository(model):
            return workspace, model
        served = model if is_artifact(model) else resolve_model_dir(model)
        check_backend(model, load_assets(served), options.backend)  # fail here, not inside Triton
        # The model's share of the serve options (batching, instances, runtime, limits), taken by name.
        model_options = TritonModelOptions(
            **{field.name: getattr(options, field.name) for field in dataclasses.fields(TritonModelOptions)}
        )
        write_model_config(workspace / "repository", served, model_options)
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)
        raise
    return workspace, workspace / "repository"


def _prepare_python_backend(backend_dir: Path) -> None:
    """Triton's Python backend with the stub built for this Python version (the wheel ships one per version)."""
    dist = triton_distribution()
    backend_dir.mkdir(parents=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            (backend_dir / item.name).symlink_to(item)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    shutil.copy2(stub, backend_dir / "triton_python_backend_stub")


def server_env() -> dict[str, str]:
    """The environment Triton and its Python-backend stub need (see the module docstring)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [libdir, str(triton_libs()), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def server_command(
    workspace: Path, repository: Path, options: ServeOptions, http: tuple[str, int] | None = None
) -> list[str]:
    """The ``tritonserver`` command line; ``http``: where its HTTP front end listens (default: the options')."""
    dist = triton_distribution()
    http_host, http_port = http or (options.host, options.http_port)
    return [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={workspace / 'backends'}",
        f"--cache-directory={dist / 'caches'}",
        "--model-control-mode=explicit",
        f"--load-model={MODEL_NAME}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--http-address={http_host}",
        f"--http-port={http_port}",
        f"--grpc-address={options.host}",
        f"--grpc-port={options.grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={options.host}",
        f"--metrics-port={options.metrics_port}",
        "--log-info=false",
        # Each Python-backend instance gets its own shared-memory region name; unique per server process.
        f"--backend-config=python,shm-region-prefix-name={_shm_prefix()}",
    ]


def check_ports_free(options: ServeOptions) -> None:
    """Refuse, before anything starts, equal ports or a port another process listens on (named).

    Without this a second ``serve`` on busy ports saw the *other* server answer its readiness probe, printed
    "serving at ..." and failed seconds later without naming the port. ``SO_REUSEADDR`` as Triton binds: a
    port in TIME_WAIT after a stopped server is free.
    """
    ports = {"--http-port": options.http_port, "--grpc-port": options.grpc_port}
    ports["--metrics-port"] = options.metrics_port
    if len(set(ports.values())) < len(ports):
        listed = ", ".join(f"{name} {port}" for name, port in ports.items())
        raise ServeError(f"{listed}: the three ports must differ")
    for name, port in ports.items():
        try:
            family = socket.getaddrinfo(options.host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            raise ServeError(f"--host {options.host}: cannot be resolved ({exc.strerror})") from None
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((options.host, port))
            except OSError as exc:
                raise _port_taken(name, options.host, port, exc) from None


def check_model(model: Path, options: ServeOptions) -> None:
    """The checks ``predict`` makes, before ``tritonserver`` starts: build the same Predictor once.

    A pickle renamed to ``model.safetensors``, ``--precision bf16`` for an FP32 export or ``--device cuda``
    without a GPU is then one line at once, instead of a generic failure after Triton's start-up. A Triton
    repository from ``mmcls export --format triton`` is served as it is.
    """
    if is_triton_repository(model):
        return
    from mmcls.deploy.predictor import Predictor
    from mmcls.deploy.triton_model import tagging_thresholds

    predictor = Predictor.from_path(
        model, options.backend, device=options.device, precision=options.precision, threads=1
    )
    if predictor.assets.config.data.task == "multilabel":
        tagging_thresholds(predictor.assets)  # the served tags need the model's thresholds.json
    del predictor


def serve(model: str | Path, options: ServeOptions) -> int:
    """Run Triton until SIGTERM/SIGINT; returns the exit status (0 after a clean stop)."""
    check_ports_free(options)
    check_model(Path(model), options)
    triton_http = _internal_http_port(options) if options.validate_http else None
    workspace, repository = prepare_workspace(Path(model), options)
    process, guard = None, None
    stop_requested = []

    def request_stop(signum: int, _frame) -> None:
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if triton_http is not None:
            guard = start_guard(options, upstream=triton_http)
        process = subprocess.Popen(
            server_command(workspace, repository, options, triton_http),
            env=server_env(),
            start_new_session=True,  # Ctrl-C reaches mmcls only; mmcls then stops Triton in order
            preexec_fn=_die_with_parent,
        )
        _wait_ready(process, options, stop_requested)
        if not stop_requested:
            url = f"http://{options.host}:{options.http_port}"
            if triton_http is not None:
                url += " (bodies checked, then passed to Triton's HTTP at {}:{})".format(*triton_http)
            print(
                f"serving {MODEL_NAME} at {url}, gRPC {options.host}:{options.grpc_port}, metrics "
                f"http://{options.host}:{options.metrics_port}/metrics; stop with Ctrl-C or SIGTERM",
                flush=True,
            )
        while not stop_requested and process.poll() is None:
            time.sleep(0.2)
        if process.poll() is not None and not stop_requested:
            raise ServeError(f"tritonserver exited unexpectedly with status {process.returncode}")
        return 0
    finally:
        if guard is not None:
            guard.stop()  # no new requests reach a stopping Triton
        if process is not None:
            _stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(workspace, ignore_errors=True)
        _remove_shared_memory()
        print("mmcls serve: stopped", flush=True)


def _internal_http_port(options: ServeOptions) -> tuple[str, int]:
    """A free loopback port for Triton's own HTTP front end behind ``--validate-http``'s pass-through.

    Four distinct free ports hold at least one that is none of the three public ones (checked free, not bound).
    """
    public = {options.http_port, options.grpc_port, options.metrics_port}
    return LOOPBACK, next(port for port in free_ports(4) if port not in public)


def start_guard(options: ServeOptions, upstream: tuple[str, int]) -> HttpGuard:
    """The pass-through on the public HTTP port, forwarding to ``upstream`` (a port taken since
    :func:`check_ports_free` is the same one line)."""
    from mmcls.deploy.http_guard import HttpGuard

    guard = HttpGuard(options.host, options.http_port, "http://{}:{}".format(*upstream))
    try:
        guard.start()
    except OSError as exc:
        raise _port_taken("--http-port", options.host, options.http_port, exc) from None
    return guard


def _port_taken(name: str, host: str, port: int, exc: OSError) -> ServeError:
    return ServeError(
        f"{name} {port}: {host}:{port} is not free ({exc.strerror}); stop what listens there or choose "
        "another port"
    )


def _die_with_parent() -> None:
    """Linux: Triton gets SIGTERM if mmcls itself is killed (SIGKILL leaves no chance to stop it)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _shm_prefix() -> str:
    return f"mmcls{os.getpid()}_"


def _remove_shared_memory() -> None:
    """Shared-memory regions a crashed backend stub can leave in /dev/shm (Triton removes them on a clean stop)."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        for region in shm.glob(f"{_shm_prefix()}*"):
            region.unlink(missing_ok=True)


def _wait_ready(process: subprocess.Popen, options: ServeOptions, stop_requested: list) -> None:
    url = f"http://{options.host}:{options.http_port}/v2/models/{MODEL_NAME}/ready"
    deadline = time.monotonic() + options.start_timeout_s
    while time.monotonic() < deadline and not stop_requested:
        if process.poll() is not None:
            raise ServeError(
                f"tritonserver exited with status {process.returncode} while starting (model load failed or "
                f"a port of {options.http_port}/{options.grpc_port}/{options.metrics_port} is in use; "
                "its log is above)"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    if not stop_requested:
        raise ServeError(f"the model was not ready after {options.start_timeout_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to Triton (graceful: unload the model, close the ports), SIGKILL after a timeout."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("tritonserver did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
