// JS worker for node and deno: load one function module once, then serve many invocations at
// once until the request pipe closes. Framing and messages: fluxgw/runtime/protocol.py; the
// user-facing contract: docs/runtimes.md.
//
// Requests arrive on the pipe named by FLUX_REQUEST_FD (stdin is /dev/null, so a child process
// spawned with an inherited stdin cannot swallow them); answers go to the pipe named by
// FLUX_PROTOCOL_FD, never to stdout, so nothing the function prints can corrupt them.
// console.* becomes per-line "log" frames tagged with the invocation that printed them
// (AsyncLocalStorage: a line printed during one call lands in that call's trace even while
// others run); raw process.stdout writes go to fd 1, which the gateway drains separately.
// A Response whose body is still being produced streams as start/chunk/end frames under the
// gateway's flow-control window (a slow client slows the stream, never the other invocations).
//
// Usage: node js_worker.mjs ENTRY   |   deno run --allow-read=... js_worker.mjs ENTRY
// (deno's permissions, never -A: fluxgw/runtime/sandbox.py deno_permissions)

import { AsyncLocalStorage } from "node:async_hooks";
import { pathToFileURL } from "node:url";
import { format } from "node:util";

const isDeno = typeof globalThis.Deno !== "undefined";
const runtime = isDeno ? "deno" : "node";
const env = (name) => (isDeno ? Deno.env.get(name) : process.env[name]);
const MAX_BODY = 6 * 1024 * 1024;
const MAX_CHUNK = 64 * 1024; // protocol.MAX_CHUNK
const WINDOW = 1024 * 1024; // protocol.WINDOW
const MAX_LINE = 16 * 1024; // characters kept of one line
const MAX_LINES = 1000; // lines kept per invocation
const MAX_BYTES = 1024 * 1024; // characters kept per invocation
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
    while (offset < data.length) {
      try {
        offset += fs.writeSync(outFd, data, offset, data.length - offset);
      } catch (error) {
        if (error.code !== "EAGAIN") throw error;
      }
    }
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

// -- output: per invocation, bounded --------------------------------------------------------

class Output {
  constructor(id) {
    this.id = id;
    this.lines = 0;
    this.size = 0;
    this.dropped = 0;
    this.windowStart = Date.now();
  }

  emit(stream, text) {
    if (this.id === null && Date.now() - this.windowStart > 60_000) {
      // The worker's own lines (import time, timers) are capped per minute, not forever.
      this.flushDropped();
      this.lines = this.size = 0;
      this.windowStart = Date.now();
    }
    if (this.lines >= MAX_LINES || this.size >= MAX_BYTES) {
      this.dropped += 1;
      return;
    }
    if (text.length > MAX_LINE) {
      text = `${text.slice(0, MAX_LINE)}… [${text.length - MAX_LINE} characters cut]`;
    }
    this.lines += 1;
    this.size += text.length;
    send({ type: "log", id: this.id, stream, text, ts: Date.now() / 1000 });
  }

  write(stream, text) {
    if (this.lines >= MAX_LINES || this.size >= MAX_BYTES) {
      // A flood costs a count, not a split.
      let count = 1;
      for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) count += 1;
      this.dropped += count;
      return;
    }
    for (const line of text.split("\n")) this.emit(stream, line);
  }

  flushDropped() {
    if (this.dropped) {
      const text = `… ${this.dropped} lines dropped (output is capped at ${MAX_LINES} lines / ${MAX_BYTES / 1024} KiB per invocation)`;
      this.dropped = 0;
      send({ type: "log", id: this.id, stream: "log", text, ts: Date.now() / 1000 });
    }
  }
}

const workerOutput = new Output(null);
const storage = new AsyncLocalStorage();
const currentOutput = () => storage.getStore() ?? workerOutput;
const log = (stream, text) => currentOutput().write(stream, String(text));

for (const [name, stream] of [
  ["log", "stdout"], ["info", "stdout"], ["debug", "stdout"],
  ["warn", "stderr"], ["error", "stderr"], ["trace", "stderr"],
]) {
  console[name] = (...args) => log(stream, format(...args));
}

// One invocation's mistake (a rejected promise nobody awaited, a throw in a timer) must not
// take the worker, and every invocation running on it, down.
if (isDeno) {
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log("stderr", `unhandled rejection: ${format(event.reason)}`);
  });
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    log("stderr", `uncaught exception: ${format(event.error)}`);
  });
} else {
  process.on("unhandledRejection", (reason) => log("stderr", `unhandled rejection: ${format(reason)}`));
  process.on("uncaughtException", (error) => log("stderr", `uncaught exception: ${format(error)}`));
}

// -- request pipe -----------------------------------------------------------------------------

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

// -- invocations ------------------------------------------------------------------------------

function summary(error) {
  if (error instanceof Error) {
    // One line for the 502 message (deno's parse errors span several); the stack goes to logs.
    const text = `${error.name}: ${error.message}`.split("\n").map((l) => l.trim()).filter(Boolean);
    const line = text.join(" ");
    return [line.length > 500 ? `${line.slice(0, 500)}...` : line, String(error.stack ?? line)];
  }
  return [`Uncaught ${format(error)}`, format(error)];
}

function buildRequest(header, body, signal) {
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
  return new Request(url, { method, headers, body: hasBody ? body : undefined, signal });
}

function responseHead(value) {
  const headers = [];
  for (const [name, headerValue] of value.headers) {
    if (name.toLowerCase() !== "set-cookie") headers.push([name, headerValue]);
  }
  for (const cookie of value.headers.getSetCookie()) headers.push(["set-cookie", cookie]);
  return headers;
}

const asBytes = (chunk) => {
  if (chunk instanceof Uint8Array) return chunk;
  if (typeof chunk === "string") return encoder.encode(chunk);
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw new TypeError(`a streamed chunk must be bytes or a string, not ${typeof chunk}`);
};
const TICK = Symbol("tick");
const tick = () => new Promise((resolve) => setTimeout(() => resolve(TICK), 0));

const invocations = new Map(); // id -> Invocation

class Invocation {
  constructor(id) {
    this.id = id;
    this.output = new Output(id);
    this.controller = new AbortController();
    this.cancelled = false;
    this.finished = false;
    this.started = false;
    this.unacked = 0;
    this.creditWaiter = null;
    this.reader = null;
  }

  send(header, body) {
    if (!this.cancelled) send(header, body);
  }

  async sendBytes(status, headers, data) {
    for (let start = 0; start < Math.max(data.length, 1); start += MAX_CHUNK) {
      const piece = data.subarray(start, start + MAX_CHUNK);
      if (this.started && !piece.length) continue;
      while (this.unacked + piece.length > WINDOW && !this.cancelled) {
        await new Promise((resolve) => { this.creditWaiter = resolve; });
      }
      if (this.cancelled) return;
      this.unacked += piece.length;
      if (!this.started) {
        this.started = true;
        this.send({ type: "start", id: this.id, status, headers }, piece);
      } else {
        this.send({ type: "chunk", id: this.id }, piece);
      }
    }
  }

  credit(bytes) {
    this.unacked -= bytes;
    const waiter = this.creditWaiter;
    this.creditWaiter = null;
    if (waiter) waiter();
  }

  // Exactly one final frame per invocation: response, end, error or cancelled.
  finish(header, body) {
    if (this.finished) return;
    this.finished = true;
    this.output.flushDropped();
    invocations.delete(this.id);
    send(header, body);
  }

  async cancel(reason) {
    if (this.cancelled || this.finished) return;
    this.cancelled = true; // from now on run() and respond() send nothing
    this.creditWaiter?.();
    this.controller.abort(new Error(`cancelled by the gateway (${reason})`));
    const reader = this.reader;
    if (reader) {
      // Runs the stream's cancel() (its clean-up, its last log lines) before we let go.
      await storage.run(this.output, () =>
        Promise.race([reader.cancel(reason).catch(() => {}), new Promise((r) => setTimeout(r, 200))]));
    }
    this.finish({ type: "cancelled", id: this.id });
  }

  async run(header, body) {
    const ctx = {
      requestId: header.request_id,
      request_id: header.request_id,
      function: header.function,
      deadline: header.deadline,
      traceparent: header.traceparent ?? null,
      auth: header.auth ?? null,
      signal: this.controller.signal,
    };
    try {
      const value = await handler(buildRequest(header, body, this.controller.signal), ctx);
      if (this.cancelled) return;
      if (value instanceof Response) {
        await this.respond(value);
        return;
      }
      const text = JSON.stringify(value === undefined ? null : value);
      if (text === undefined) throw new TypeError(`handler returned a value that is not JSON: ${format(value)}`);
      if (this.cancelled) return;
      this.finish({ type: "response", id: this.id, status: 200, headers: [["content-type", "application/json"]] }, encoder.encode(text));
    } catch (error) {
      if (this.cancelled) return;
      const [message, stack] = summary(error);
      const frame = { type: "error", id: this.id, error: message, traceback: stack };
      if (error instanceof RangeError && /allocation|memory/i.test(error.message)) frame.code = "memory_limit_exceeded";
      this.finish(frame);
    }
  }

  // A body complete within one turn of the event loop is sent whole (one frame, with a
  // Content-Length); one still being produced streams, its head leaving with the first chunk.
  async respond(value) {
    const status = value.status;
    const headers = responseHead(value);
    if (value.body === null) {
      this.finish({ type: "response", id: this.id, status, headers }, new Uint8Array(0));
      return;
    }
    const reader = (this.reader = value.body.getReader());
    const parts = [];
    let size = 0;
    let item = await reader.read();
    let underway = null; // a read already started when we decided to stream
    let streaming = false;
    while (!item.done) {
      const bytes = asBytes(item.value);
      parts.push(bytes);
      size += bytes.length;
      if (size > MAX_CHUNK) {
        streaming = true;
        break;
      }
      const read = reader.read();
      const raced = await Promise.race([read, tick()]);
      if (raced === TICK) {
        streaming = true;
        underway = read;
        break;
      }
      item = raced;
    }
    if (this.cancelled) return;
    if (!streaming) {
      this.finish({ type: "response", id: this.id, status, headers }, concat(parts, size));
      return;
    }
    await this.sendBytes(status, headers, concat(parts, size));
    for (let read = underway ?? reader.read(); !this.cancelled; read = reader.read()) {
      const next = await read;
      if (next.done || this.cancelled) break;
      await this.sendBytes(status, headers, asBytes(next.value));
    }
    if (this.cancelled) return;
    this.finish({ type: "end", id: this.id });
  }
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
send({ type: "ready", pid: isDeno ? Deno.pid : process.pid, runtime, concurrency: null });

while (true) {
  const frame = await receive();
  if (frame === null) break;
  const [header, body] = frame;
  if (header.type === "invoke") {
    const invocation = new Invocation(header.id);
    invocations.set(header.id, invocation);
    storage.run(invocation.output, () => invocation.run(header, body));
  } else if (header.type === "cancel") {
    invocations.get(header.id)?.cancel(header.reason ?? "cancelled");
  } else if (header.type === "credit") {
    invocations.get(header.id)?.credit(Number(header.bytes) || 0);
  }
}
if (isDeno) Deno.exit(0);
else process.exit(0);
