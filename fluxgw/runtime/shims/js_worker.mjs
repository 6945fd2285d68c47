// JS worker for node and deno: load one function module once, serve invocations until the
// request pipe closes. Framing and messages: see fluxgw/runtime/protocol.py.
//
// Requests arrive on the pipe named by FLUX_REQUEST_FD (stdin is /dev/null, so a child process
// spawned with an inherited stdin cannot swallow them; plain stdin without it); answers go to the dedicated pipe named by FLUX_PROTOCOL_FD (opened
// via /dev/fd on deno, written directly on node), never to stdout, so nothing the function
// prints can corrupt them. console.* becomes per-line "log" frames; raw process.stdout writes go
// to fd 1, which the gateway drains separately.
//
// Usage: node js_worker.mjs ENTRY   |   deno run -A js_worker.mjs ENTRY

import { pathToFileURL } from "node:url";
import { format } from "node:util";

const isDeno = typeof globalThis.Deno !== "undefined";
const runtime = isDeno ? "deno" : "node";
const env = (name) => (isDeno ? Deno.env.get(name) : process.env[name]);
const MAX_BODY = 6 * 1024 * 1024;
const MAX_LINE = 16 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const outFd = Number(env("FLUX_PROTOCOL_FD"));
let writeAll;
if (isDeno) {
  const file = Deno.openSync(`/dev/fd/${outFd}`, { write: true });
  writeAll = (data) => {
    let offset = 0;
    while (offset < data.length) offset += file.writeSync(data.subarray(offset));
  };
} else {
  const fs = await import("node:fs");
  writeAll = (data) => {
    let offset = 0;
    while (offset < data.length) offset += fs.writeSync(outFd, data, offset, data.length - offset);
  };
}

function send(header, body = new Uint8Array(0)) {
  const raw = encoder.encode(JSON.stringify(header));
  const frame = new Uint8Array(8 + raw.length + body.length);
  const view = new DataView(frame.buffer);
  view.setUint32(0, raw.length);
  view.setUint32(4, body.length);
  frame.set(raw, 8);
  frame.set(body, 8 + raw.length);
  writeAll(frame);
}

function log(stream, text) {
  for (const line of String(text).split("\n")) {
    for (let start = 0; start < Math.max(line.length, 1); start += MAX_LINE) {
      send({ type: "log", stream, text: line.slice(start, start + MAX_LINE), ts: Date.now() / 1000 });
    }
  }
}

for (const [name, stream] of [
  ["log", "stdout"], ["info", "stdout"], ["debug", "stdout"],
  ["warn", "stderr"], ["error", "stderr"], ["trace", "stderr"],
]) {
  console[name] = (...args) => log(stream, format(...args));
}

// Pull-based reader over the request pipe: frames are read one at a time, between invocations.
const inFd = env("FLUX_REQUEST_FD");
let input;
if (isDeno) {
  input = inFd ? (await Deno.open(`/dev/fd/${inFd}`, { read: true })).readable : Deno.stdin.readable;
} else if (inFd) {
  const net = await import("node:net");
  input = new net.Socket({ fd: Number(inFd), readable: true, writable: false });
} else {
  input = process.stdin;
}
const chunks = input[Symbol.asyncIterator]();
let pending = [];
let pendingLength = 0;

async function readExact(n) {
  while (pendingLength < n) {
    const { value, done } = await chunks.next();
    if (done) return null;
    const chunk = value instanceof Uint8Array ? value : encoder.encode(value);
    pending.push(chunk);
    pendingLength += chunk.length;
  }
  const all = pending.length === 1 ? pending[0] : concat(pending, pendingLength);
  const out = all.subarray(0, n);
  const rest = all.subarray(n);
  pending = rest.length ? [rest] : [];
  pendingLength = rest.length;
  return out;
}

function concat(parts, length) {
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

async function receive() {
  const prefix = await readExact(8);
  if (prefix === null) return null;
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const headerLength = view.getUint32(0);
  const bodyLength = view.getUint32(4);
  const raw = await readExact(headerLength + bodyLength);
  if (raw === null) return null;
  const header = JSON.parse(decoder.decode(raw.subarray(0, headerLength)));
  return [header, raw.slice(headerLength)];
}

function summary(error) {
  if (error instanceof Error) {
    // One line for the 502 message (deno's parse errors span several); the stack goes to logs.
    const text = `${error.name}: ${error.message}`.split("\n").map((l) => l.trim()).filter(Boolean);
    const line = text.join(" ");
    return [line.length > 500 ? `${line.slice(0, 500)}...` : line, String(error.stack ?? line)];
  }
  return [`Uncaught ${format(error)}`, format(error)];
}

function buildRequest(header, body) {
  let url = header.url;
  if (!url) {
    const query = new URLSearchParams(header.query ?? []).toString();
    url = `http://localhost${header.path ?? "/"}${query ? `?${query}` : ""}`;
  }
  const headers = new Headers();
  // never an API key; a verified user token (auth type "jwt") is meant to reach the function
  const tokenAuth = header.auth?.type === "jwt";
  for (const [name, value] of header.headers ?? []) {
    if (name.toLowerCase() === "authorization" && !tokenAuth) continue;
    try {
      headers.append(name, value);
    } catch {
      // a header the Fetch API refuses (invalid bytes): the raw request keeps going without it
    }
  }
  const method = header.method ?? "GET";
  const hasBody = body.length > 0 && method !== "GET" && method !== "HEAD";
  return new Request(url, { method, headers, body: hasBody ? body : undefined });
}

async function toResponse(value) {
  if (value instanceof Response) {
    const headers = [];
    for (const [name, headerValue] of value.headers) {
      if (name.toLowerCase() !== "set-cookie") headers.push([name, headerValue]);
    }
    for (const cookie of value.headers.getSetCookie()) headers.push(["set-cookie", cookie]);
    const body = new Uint8Array(await value.arrayBuffer());
    if (body.length > MAX_BODY) {
      throw new Error(`response body of ${body.length} bytes exceeds the ${MAX_BODY} byte limit`);
    }
    return [value.status, headers, body];
  }
  const text = JSON.stringify(value === undefined ? null : value);
  if (text === undefined) throw new TypeError(`handler returned a value that is not JSON: ${format(value)}`);
  return [200, [["content-type", "application/json"]], encoder.encode(text)];
}

const entry = isDeno ? Deno.args[0] : process.argv[2];
let handler;
try {
  const module = await import(pathToFileURL(entry).href);
  handler = module.default;
  if (typeof handler !== "function") {
    throw new TypeError(`${entry.split("/").pop()} has no default export function (export default async function (req, ctx) {...})`);
  }
} catch (error) {
  const [message, stack] = summary(error);
  send({ type: "start_failed", error: message, traceback: stack });
  if (isDeno) Deno.exit(1);
  else process.exit(1);
}
send({ type: "ready", pid: isDeno ? Deno.pid : process.pid, runtime });

while (true) {
  const frame = await receive();
  if (frame === null) break;
  const [header, body] = frame;
  if (header.type !== "invoke") continue;
  const ctx = {
    requestId: header.request_id,
    request_id: header.request_id,
    function: header.function,
    deadline: header.deadline,
    traceparent: header.traceparent ?? null,
    auth: header.auth ?? null,
  };
  let answer;
  try {
    answer = await toResponse(await handler(buildRequest(header, body), ctx));
  } catch (error) {
    const [message, stack] = summary(error);
    send({ type: "error", id: header.id, error: message, traceback: stack });
    continue;
  }
  const [status, headers, responseBody] = answer;
  send({ type: "result", id: header.id, status, headers }, responseBody);
}
if (isDeno) Deno.exit(0);
else process.exit(0);
