// The dashboard's shell: the session (its CSRF token), the JSON API helper, the router.
import { h } from "./dom.js";
import { pages } from "./pages.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
let csrf = null;
let cleanup = null;
let shown = 0; // the latest navigation: an older page that finishes loading late is dropped

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
  }
}

export async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    headers["content-type"] = "application/json";
    headers["x-csrf-token"] = csrf;
  }
  const response = await fetch(`/api/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const data = await response.json().catch(() => null);
  if (response.status === 401) loggedOut();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function announce(text) {
  status.textContent = text;
  status.classList.add("visible");
  clearTimeout(announce.timer);
  announce.timer = setTimeout(() => status.classList.remove("visible"), 4000);
}

function loggedOut() {
  if (cleanup) cleanup();
  cleanup = null;
  main.replaceChildren(
    h("h1", { text: "Logged out" }),
    h("p", {}, "Your session ended. Run ", h("code", { text: "flux dashboard" }),
      " in the project folder for a fresh login link."));
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const page = pages[name] || pages.overview;
  for (const link of document.querySelectorAll("nav a")) {
    const current = link.getAttribute("href") === `#/${name}` ||
      (name === "trace" && link.getAttribute("href") === "#/requests");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const mine = ++shown;
  const container = h("div");
  let done = null;
  try {
    done = (await page(container, rest.map(decodeURIComponent))) || null;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    container.replaceChildren(h("h1", { text: "Something went wrong" }), h("p", { class: "error", text: String(error.message || error) }));
  }
  if (mine !== shown) {
    if (done) done();
    return;
  }
  cleanup = done;
  main.replaceChildren(...container.childNodes);
  document.title = `${main.querySelector("h1")?.textContent || "Flux"} · Flux dashboard`;
}

async function start() {
  try {
    const session = await api("GET", "session");
    csrf = session.csrf_token;
  } catch {
    return;
  }
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "logout", {}).catch(() => null);
    loggedOut();
  });
  window.addEventListener("hashchange", route);
  await route();
}

start();
