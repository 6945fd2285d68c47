// POST /create_order: validates a JSON order and answers 201 with its id.
interface Order {
  item: string;
  qty: number;
}

export default async function (req: Request, ctx: { requestId: string }): Promise<Response> {
  let order: Order;
  try {
    order = await req.json();
  } catch {
    return Response.json({ error: "body must be JSON" }, { status: 400 });
  }
  if (typeof order.item !== "string" || !Number.isInteger(order.qty) || order.qty < 1) {
    return Response.json({ error: "expected {item: string, qty: positive integer}" }, { status: 422 });
  }
  console.log(`order for ${order.qty} x ${order.item}`);
  const id = crypto.randomUUID();
  return Response.json(
    { id, item: order.item, qty: order.qty, request_id: ctx.requestId },
    { status: 201, headers: { location: `/orders/get?id=${id}` } },
  );
}
