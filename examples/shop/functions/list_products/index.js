// GET /products: a plain value becomes a 200 JSON answer.
const PRODUCTS = [
  { sku: "book", price: 12.5 },
  { sku: "pen", price: 1.2 },
];

export default async function (req, ctx) {
  const max = Number(new URL(req.url).searchParams.get("max") ?? PRODUCTS.length);
  console.log(`listing up to ${max} products`);
  return { products: PRODUCTS.slice(0, max), request_id: ctx.requestId };
}
