"""GET /orders/get?id=N: a made-up order, to show query parameters and ctx."""

from fluxgw.runtime import Response


def handler(request, ctx):
    order_id = request["query"].get("id")
    if not order_id:
        return Response(400, {"error": "pass ?id=ORDER_ID"})
    ctx.logger.info("looking up order %s", order_id)
    return {"id": order_id, "status": "shipped", "request_id": ctx.request_id}
