// A small SVG line chart for the robustness curves and the training curves.
"use strict";

const COLORS = ["#1f5fbf", "#d1495b", "#2a9d8f", "#e9a03b", "#6a4c93"];

const SVG = "http://www.w3.org/2000/svg";

// An SVG element with attributes and, optionally, text (set as text: names come from storage).
function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function chart(series, xlabel, ylabel) {
  const W = 320, H = 180, L = 44, B = 30, T = 8, R = 8;
  const pts = Object.values(series).flat();
  const wrap = document.createElement("div");
  if (!pts.length) { wrap.textContent = "no data"; return wrap; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => L + (W - L - R) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const sy = (y) => H - B - (H - B - T) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const fmt = (v) => Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
  const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                            "aria-label": `${ylabel} against ${xlabel}`});
  svg.append(
    svgEl("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}),
    svgEl("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}),
    svgEl("text", {x: L, y: H - B + 12}, fmt(x0)),
    svgEl("text", {x: W - R, y: H - B + 12, "text-anchor": "end"}, fmt(x1)),
    svgEl("text", {x: L - 3, y: T + 8, "text-anchor": "end"}, fmt(y1)),
    svgEl("text", {x: L - 3, y: H - B, "text-anchor": "end"}, fmt(y0)),
    svgEl("text", {x: (L + W) / 2, y: H - 4, "text-anchor": "middle"}, xlabel),
    svgEl("text", {x: 10, y: (H - B) / 2, transform: `rotate(-90 10 ${(H - B) / 2})`,
                   "text-anchor": "middle"}, ylabel));
  Object.values(series).forEach((p, i) => {
    const d = p.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", {fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2,
                                  points: d}));
  });
  wrap.append(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  Object.keys(series).forEach((name, i) => {
    const s = document.createElement("span");
    s.style.setProperty("--c", COLORS[i % COLORS.length]);
    s.textContent = name;
    legend.append(s);
  });
  wrap.append(legend);
  return wrap;
}
