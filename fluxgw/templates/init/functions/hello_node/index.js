export default async function (req, ctx) {
  const body = await req.json().catch(() => ({}));
  console.log(`greeting ${body.name ?? "world"}`);
  return { message: `Hello, ${body.name ?? "world"}!`, runtime: "node", request_id: ctx.requestId };
}
