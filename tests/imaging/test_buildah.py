"""The serving image built for real: buildah (vfs storage, chroot isolation) on a Debian-made Python
base, pushed to a docker-registry on 127.0.0.1, then run to answer a prediction.

Measured with the base root filesystem cached, ``time python3 -m pytest tests/imaging``, on a 2-core
machine shared with other builds: 158 s at load average ~3, 214 s at ~5 (base image import and push
~50 s, ``pip install`` of the pinned wheels ~85 s, commit + push ~40 s, running the image ~20-35 s).
The first run on a machine adds debootstrap: ~1.5 min idle, ~4 min under load.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from abflow.components.imaging import BuildContext, BuiltImage, ImageBuildError, build_image, make_build_context
from abflow.serving.artifact import DEFAULT_CLASS_NAMES
from tests.fixtures.images import Buildah, Registry, stop_process
from tests.fixtures.processes import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPOSITORY = "abflow/iris-server"
SETOSA = {"data": {"names": ["sl", "sw", "pl", "pw"], "tensor": {"shape": [1, 4], "values": [5.1, 3.5, 1.4, 0.2]}}}


@pytest.fixture(scope="module")
def serving_context(tmp_path_factory: pytest.TempPathFactory, python_base_image: str) -> BuildContext:
    """Made once: the working tree may change while the module runs, and a rebuild must see the same bytes."""
    return make_build_context(tmp_path_factory.mktemp("serving-context") / "ctx", base_image=python_base_image)


def build(context: BuildContext, registry: Registry, buildah: Buildah, *, push: bool = True) -> BuiltImage:
    return build_image(
        context,
        image_repo=f"{registry.host}/{REPOSITORY}",
        builder="buildah",
        push=push,
        tls_verify=False,
        storage_root=buildah.storage_root,
    )


@pytest.fixture(scope="module")
def serving_image(serving_context: BuildContext, image_registry: Registry, buildah: Buildah) -> BuiltImage:
    return build(serving_context, image_registry, buildah)


def test_build_pushes_the_content_tag(serving_image: BuiltImage, image_registry: Registry) -> None:
    assert (serving_image.builder, serving_image.pushed, serving_image.skipped_existing) == ("buildah", True, False)
    assert serving_image.ref == f"{image_registry.host}/{REPOSITORY}:{serving_image.tag}"
    assert serving_image.tag in image_registry.tags(REPOSITORY)


def test_unchanged_context_is_not_rebuilt(
    serving_image: BuiltImage, serving_context: BuildContext, image_registry: Registry, buildah: Buildah
) -> None:
    for push in (True, False):  # in the registry when pushing, in buildah's storage when not
        again = build(serving_context, image_registry, buildah, push=push)
        assert again.skipped_existing, f"push={push}"
        assert (again.ref, again.pushed) == (serving_image.ref, push)


def test_image_runs_the_model_server_as_non_root(serving_image: BuiltImage, buildah: Buildah) -> None:
    config = json.loads(buildah("inspect", "--type", "image", serving_image.ref))["OCIv1"]["config"]
    assert config["Entrypoint"] == ["python3", "-m", "abflow.serving.modelserver"]
    assert config["User"] == "10001:10001"
    assert "9000/tcp" in config["ExposedPorts"]
    assert "ABFLOW_HOST=0.0.0.0" in config["Env"]


def predict(port: int) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1.0/predictions",
        data=json.dumps(SETOSA).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.load(response))


def test_built_image_answers_a_prediction(
    serving_image: BuiltImage, buildah: Buildah, iris_model_dir: Path, tmp_path: Path
) -> None:
    """chroot isolation shares the host's network, so the server in the image listens on 127.0.0.1."""
    container = buildah("from", serving_image.ref)
    port = free_port()
    log_path = tmp_path / "modelserver.log"
    try:
        buildah("copy", "--chown", "10001:10001", container, str(iris_model_dir), "/models/iris")
        command = ["python3", "-m", "abflow.serving.modelserver", "--model", "/models/iris", "--port", str(port)]
        with log_path.open("wb") as log:
            # --host: stay off this machine's other interfaces (the image defaults to 0.0.0.0).
            server = subprocess.Popen(
                buildah.argv("run", "--isolation", "chroot", container, "--", *command, "--host", "127.0.0.1"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # buildah run, its chroot helpers and the server: one group to stop
            )
        try:

            def answered() -> dict[str, object]:
                assert server.poll() is None, f"the model server exited: {log_path.read_text()[-2000:]}"
                return predict(port)

            response = wait_until(answered, timeout=90, interval=0.2, what="the model server in the image")
        finally:
            stop_process(server, group=True)
    finally:
        buildah("rm", container)
    data = response["data"]
    assert isinstance(data, dict)
    assert data["names"] == list(DEFAULT_CLASS_NAMES)
    probabilities = data["tensor"]["values"]
    assert abs(sum(probabilities) - 1) < 1e-9
    assert max(range(3), key=probabilities.__getitem__) == 0, "a setosa flower must be predicted setosa"


def test_missing_base_image_fails_with_the_tools_output_and_what_to_do(
    image_registry: Registry, buildah: Buildah, tmp_path: Path
) -> None:
    context = make_build_context(tmp_path / "ctx", base_image=f"{image_registry.host}/no-such-base:1")
    with pytest.raises(ImageBuildError) as failure:
        build(context, image_registry, buildah)
    message = str(failure.value)
    assert "building" in message and "no-such-base" in message
    assert "  | " in message, "the tool's own output is quoted"
    assert "base_image exists and is reachable" in message
