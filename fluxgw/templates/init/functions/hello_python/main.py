def handler(request, ctx):
    name = request["query"].get("name", "world")
    print(f"greeting {name}")  # captured into the request's trace: flux trace ID
    return {"message": f"Hello, {name}!", "runtime": "python", "request_id": ctx.request_id}
