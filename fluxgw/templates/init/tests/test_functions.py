"""Tests for this project's functions, against a real Flux gateway started per test.

Run them with `pytest` (the flux_gateway fixture comes with the fluxgw package).
"""


async def test_hello_python(flux_gateway):
    key = flux_gateway.create_key("test")
    response = await flux_gateway.client.get(
        "/hello/python", params={"name": "Ada"}, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert response.json()["message"] == "Hello, Ada!"
    assert response.headers["x-request-id"]


async def test_requests_need_a_key(flux_gateway):
    response = await flux_gateway.client.get("/hello/python")
    assert response.status_code == 401
    assert response.json()["error"] == "missing_key"


async def test_rate_limit_refills_without_sleeping(flux_gateway):
    key = flux_gateway.create_key("burst")
    headers = {"authorization": f"Bearer {key}"}
    flux_gateway.set_plan("free")  # 60/min sustained, burst 120
    statuses = [
        (await flux_gateway.client.get("/hello/python", headers=headers)).status_code
        for _ in range(121)
    ]
    assert statuses.count(200) == 120 and statuses[-1] == 429
    flux_gateway.clock.advance(1.0)  # one more token, no sleep
    assert (await flux_gateway.client.get("/hello/python", headers=headers)).status_code == 200
