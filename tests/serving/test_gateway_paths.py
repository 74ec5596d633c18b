"""Seldon's gateway paths, ``/seldon/[<namespace>/]<deployment>/<route>``, reach the route they wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from abflow.serving.service import OTHER_PATH, Call, Reply, UrlDispatch

segments = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


async def answer(call: Call) -> Reply:
    return Reply(200, b"{}")


def routes(deployment: str) -> UrlDispatch:
    table = UrlDispatch()
    table.add("POST", "/api/v1.0/predictions", answer)
    table.add("GET", "/api/v1.0/metadata", answer)
    table.add_gateway(deployment)
    return table


@given(segments, segments)
def test_a_gateway_path_with_or_without_a_namespace_reaches_its_route(namespace: str, deployment: str) -> None:
    table = routes(deployment)
    for prefix in (f"/seldon/{namespace}/{deployment}", f"/seldon/{deployment}"):
        assert table.label(f"{prefix}/api/v1.0/predictions") == "/api/v1.0/predictions"
        assert table.label(f"{prefix}/api/v1.0/metadata/") == "/api/v1.0/metadata"


@given(segments, segments, segments)
def test_another_deployment_or_a_path_that_is_no_route_is_not_found(namespace: str, deployment: str,
                                                                    other: str) -> None:
    table = routes(deployment)
    if other != deployment and namespace != deployment:
        assert table.label(f"/seldon/{namespace}/{other}/api/v1.0/predictions") == OTHER_PATH
    assert table.label(f"/seldon/{namespace}/{deployment}/api/v1.0/nothing") == OTHER_PATH
    assert table.label(f"/seldon/{deployment}") == OTHER_PATH


def test_without_a_gateway_seldon_paths_are_not_routes() -> None:
    table = UrlDispatch()
    table.add("POST", "/api/v1.0/predictions", answer)
    assert table.label("/seldon/ns/iris/api/v1.0/predictions") == OTHER_PATH
