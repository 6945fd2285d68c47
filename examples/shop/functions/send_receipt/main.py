"""POST /receipts (async): queued, answered 202 at once, run by the gateway's queue."""


def handler(request, ctx):
    body = request["body"] or {}
    print(f"sending receipt to {body.get('email', 'nobody')}")
    return {"sent": True}
