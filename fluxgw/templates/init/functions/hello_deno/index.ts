export default async function (req: Request, ctx: { requestId: string }): Promise<Response> {
  const name = new URL(req.url).searchParams.get("name") ?? "world";
  console.log(`greeting ${name}`);
  return Response.json(
    { message: `Hello, ${name}!`, runtime: "deno", request_id: ctx.requestId },
    { headers: { "cache-control": "no-store" } },
  );
}
