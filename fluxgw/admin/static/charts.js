// Time-series line charts drawn as plain SVG, sized to their container in CSS pixels (so text
// stays readable at phone width). Colours come from the stylesheet through class names.
import { h, s } from "./dom.js";

const PAD = { top: 12, right: 12, bottom: 22, left: 44 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function label(value) {
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

// A chart: { title, unit, lines: [{ name, className, key }] } over points [{ t, ...key }].
export class LineChart {
  constructor(title, unit, lines) {
    this.title = title;
    this.unit = unit;
    this.lines = lines;
    this.points = [];
    this.svg = s("svg", { role: "img", "aria-label": `${title} over the last 15 minutes` });
    this.legend = h("ul", { class: "legend" },
      lines.map((line) => h("li", {}, h("span", { class: `swatch ${line.className}`, "aria-hidden": "true" }), line.name)));
    this.node = h("figure", { class: "chart" },
      h("figcaption", {}, h("span", { text: title }), this.legend),
      this.svg);
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.node);
  }

  set(points) {
    this.points = points;
    this.draw();
  }

  draw() {
    const width = Math.max(240, Math.floor(this.node.clientWidth || 600));
    const height = 170;
    const svg = this.svg;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const points = this.points;
    if (!points.length) return;
    const innerW = width - PAD.left - PAD.right;
    const innerH = height - PAD.top - PAD.bottom;
    let top = 0;
    for (const p of points) for (const line of this.lines) top = Math.max(top, p[line.key] || 0);
    top = niceMax(top);
    const t0 = points[0].t;
    const span = Math.max(1, points[points.length - 1].t - t0);
    const x = (t) => PAD.left + ((t - t0) / span) * innerW;
    const y = (v) => PAD.top + innerH - (v / top) * innerH;

    for (const fraction of [0, 0.5, 1]) {
      const value = top * fraction;
      svg.append(
        s("line", { class: "grid", x1: PAD.left, x2: width - PAD.right, y1: y(value), y2: y(value) }),
        s("text", { class: "axis", x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end" }, label(value)));
    }
    for (const [t, anchor] of [[t0, "start"], [t0 + span, "end"]]) {
      const minutes = Math.round((points[points.length - 1].t - t) / 60);
      svg.append(s("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": anchor },
        minutes ? `${minutes} min ago` : "now"));
    }
    if (this.unit) {
      svg.append(s("text", { class: "axis", x: PAD.left + 4, y: PAD.top + 10 }, this.unit));
    }
    for (const line of this.lines) {
      let d = "";
      let pen = false;
      points.forEach((p, i) => {
        const v = p[line.key];
        if (v === null || v === undefined) { pen = false; return; }
        const px = x(p.t).toFixed(1);
        const py = y(v).toFixed(1);
        d += `${pen ? "L" : "M"}${px},${py}`;
        const next = points[i + 1];
        if (!pen && (!next || next[line.key] === null || next[line.key] === undefined)) {
          // a second with no neighbours: a dot, or it would not show at all
          svg.append(s("circle", { class: `dot ${line.className}`, cx: px, cy: py, r: 2.5 }));
        }
        pen = true;
      });
      if (d) svg.append(s("path", { class: `line ${line.className}`, d }));
    }
  }

  close() {
    this.resize.disconnect();
  }
}
