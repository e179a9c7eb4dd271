// The admin console's only script: confirmation of state-changing forms, and two SVG charts
// (thumbs-up rates with intervals; loss per step, polled while a job runs). No library and no
// other origin: the page's Content-Security-Policy allows scripts and requests from 'self' only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = { base: "#52606d", fine_tuned: "#d9480f", train: "#1c7ed6", valid: "#d9480f" };

document.addEventListener("submit", (event) => {
  const form = event.target;
  // Every POST form carries data-confirm: nothing changes without a second click.
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

function axisY(svg, box, lo, hi, ticks, fmt) {
  for (let i = 0; i <= ticks; i++) {
    const v = lo + ((hi - lo) * i) / ticks;
    const y = box.y + box.h - (box.h * i) / ticks;
    svg.appendChild(el("line", { x1: box.x, x2: box.x + box.w, y1: y, y2: y, class: "grid" }));
    svg.appendChild(el("text", { x: box.x - 6, y: y + 4, "text-anchor": "end", class: "tick" }, fmt(v)));
  }
}

// -- thumbs-up rates: the report's user-level figures (the decision) and reply-level ones ----

function ratePoints(report) {
  const points = [];
  for (const arm of ["base", "fine_tuned"]) {
    const u = report.user_level;
    const ci = (u.rate_ci95 || {})[arm];
    points.push({ arm, level: "per traveller", rate: (u.rate || {})[arm] ?? null,
                  low: ci ? ci[0] : null, high: ci ? ci[1] : null, n: (u.users || {})[arm] || 0 });
    const a = (report.arms || {})[arm];
    if (a) {
      points.push({ arm, level: "per reply", rate: a.rated ? a.up_rate : null,
                    low: a.rated ? a.ci95_low : null, high: a.rated ? a.ci95_high : null,
                    n: a.rated });
    }
  }
  return points;
}

function drawRates(figure, report) {
  const svg = figure.querySelector("svg");
  clear(svg);
  const box = { x: 56, y: 16, w: 560, h: 190 };
  const y = (v) => box.y + box.h - box.h * Math.min(1, Math.max(0, v));
  axisY(svg, box, 0, 1, 4, (v) => `${Math.round(v * 100)} %`);
  const points = ratePoints(report);
  const slot = box.w / points.length;
  points.forEach((p, i) => {
    const cx = box.x + slot * (i + 0.5);
    const colour = COLOURS[p.arm];
    if (p.low !== null && p.high !== null) {
      svg.appendChild(el("line", { x1: cx, x2: cx, y1: y(p.low), y2: y(p.high), stroke: colour, "stroke-width": 2 }));
      for (const v of [p.low, p.high]) {
        svg.appendChild(el("line", { x1: cx - 8, x2: cx + 8, y1: y(v), y2: y(v), stroke: colour, "stroke-width": 2 }));
      }
    }
    if (p.rate !== null) {
      const dot = el("circle", { cx, cy: y(p.rate), r: 6, fill: p.level === "per traveller" ? colour : "white", stroke: colour, "stroke-width": 2 });
      dot.appendChild(el("title", {}, `${p.arm} ${p.level}: ${(p.rate * 100).toFixed(1)} % [${p.low === null ? "–" : (p.low * 100).toFixed(1)}, ${p.high === null ? "–" : (p.high * 100).toFixed(1)}] (n = ${p.n})`));
      svg.appendChild(dot);
      svg.appendChild(el("text", { x: cx + 10, y: y(p.rate) + 4, class: "value" }, `${(p.rate * 100).toFixed(1)} %`));
    } else {
      svg.appendChild(el("text", { x: cx, y: box.y + box.h / 2, "text-anchor": "middle", class: "muted" }, "no ratings"));
    }
    svg.appendChild(el("text", { x: cx, y: box.y + box.h + 18, "text-anchor": "middle", class: "label" }, p.arm));
    svg.appendChild(el("text", { x: cx, y: box.y + box.h + 34, "text-anchor": "middle", class: "tick" }, `${p.level}, n = ${p.n}`));
  });
  // What was drawn, for tests and for anyone checking the chart against `ab report --json`.
  figure.dataset.plotted = JSON.stringify(points);
  figure.dataset.experiment = report.experiment_id;
}

async function reportChart(figure) {
  const answer = await fetch(figure.dataset.src, { credentials: "same-origin" });
  if (!answer.ok) {
    figure.querySelector("svg").appendChild(el("text", { x: 20, y: 40 }, `report unavailable (${answer.status})`));
    return;
  }
  drawRates(figure, await answer.json());
}

// -- replies and thumbs up per arm per day -----------------------------------------------------

function drawActivity(figure) {
  const rows = JSON.parse(figure.dataset.activity || "[]");
  const svg = figure.querySelector("svg");
  clear(svg);
  const days = [...new Set(rows.map((r) => r.day))];
  const box = { x: 48, y: 10, w: 570, h: 150 };
  const top = Math.max(1, ...rows.map((r) => r.replies));
  const y = (v) => box.y + box.h - (box.h * v) / top;
  axisY(svg, box, 0, top, 4, (v) => String(Math.round(v)));
  const slot = box.w / Math.max(1, days.length);
  const bar = Math.min(24, slot / 3);
  days.forEach((day, i) => {
    ["base", "fine_tuned"].forEach((arm, j) => {
      const r = rows.find((row) => row.day === day && row.arm === arm);
      if (!r) return;
      const x = box.x + slot * i + slot / 2 + (j - 1) * (bar + 2);
      const outline = el("rect", { x, y: y(r.replies), width: bar, height: box.y + box.h - y(r.replies), fill: "white", stroke: COLOURS[arm] });
      outline.appendChild(el("title", {}, `${day} ${arm}: ${r.replies} replies, ${r.rated} rated, ${r.thumbs_up} thumbs up`));
      svg.appendChild(outline);
      svg.appendChild(el("rect", { x, y: y(r.thumbs_up), width: bar, height: box.y + box.h - y(r.thumbs_up), fill: COLOURS[arm] }));
    });
    if (days.length <= 14 || i % Math.ceil(days.length / 14) === 0) {
      svg.appendChild(el("text", { x: box.x + slot * i + slot / 2, y: box.y + box.h + 16, "text-anchor": "middle", class: "tick" }, day.slice(5)));
    }
  });
}

// -- loss per step ----------------------------------------------------------------------------

function drawLoss(figure, data) {
  const svg = figure.querySelector("svg");
  clear(svg);
  const box = { x: 56, y: 16, w: 560, h: 220 };
  const rows = data.rows || [];
  const series = [["train", "train_loss"], ["valid", "valid_loss"]].map(([name, key]) => ({
    name, points: rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]),
  }));
  const all = series.flatMap((s) => s.points);
  figure.dataset.points = String(all.length);
  if (!all.length) {
    svg.appendChild(el("text", { x: box.x + box.w / 2, y: box.y + box.h / 2, "text-anchor": "middle", class: "muted" }, "no metrics yet"));
    return;
  }
  const steps = all.map((p) => p[0]);
  const losses = all.map((p) => p[1]);
  const [s0, s1] = [Math.min(...steps), Math.max(...steps, Math.min(...steps) + 1)];
  const [l0, l1] = [Math.min(0, ...losses), Math.max(...losses) * 1.05 || 1];
  const x = (s) => box.x + (box.w * (s - s0)) / (s1 - s0);
  const y = (v) => box.y + box.h - (box.h * (v - l0)) / (l1 - l0);
  axisY(svg, box, l0, l1, 4, (v) => v.toFixed(2));
  svg.appendChild(el("text", { x: box.x + box.w / 2, y: box.y + box.h + 32, "text-anchor": "middle", class: "tick" }, `step ${s0}–${s1}`));
  for (const r of rows) {
    if (typeof r.epoch === "number" && Number.isInteger(r.epoch) && r.epoch > 0 && typeof r.valid_loss === "number") {
      svg.appendChild(el("line", { x1: x(r.step), x2: x(r.step), y1: box.y, y2: box.y + box.h, class: "epoch" }));
      // Labelled on the left of the line near the right edge, where the right would be cut off.
      const right = x(r.step) > box.x + box.w - 60;
      svg.appendChild(el("text", { x: x(r.step) + (right ? -3 : 3), y: box.y + 10, "text-anchor": right ? "end" : "start", class: "tick" }, `epoch ${r.epoch}`));
    }
  }
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(el("path", { d, fill: "none", stroke: COLOURS[s.name], "stroke-width": 2 }));
    for (const p of s.points.length < 60 ? s.points : []) {
      svg.appendChild(el("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: COLOURS[s.name] }));
    }
    svg.appendChild(el("text", { x: box.x + box.w - 160, y: box.y + 28 + 16 * i, fill: COLOURS[s.name], class: "legend" }, `${s.name} loss`));
  });
}

async function lossChart(figure) {
  const answer = await fetch(figure.dataset.src, { credentials: "same-origin" });
  if (!answer.ok) return;
  const data = await answer.json();
  drawLoss(figure, data);
  const status = document.querySelector("[data-job-status]");
  if (status) status.textContent = data.status;
  const progress = document.querySelector("[data-job-progress]");
  if (progress) progress.textContent = data.progress;
  const kept = figure.querySelector("[data-kept]");
  if (kept && data.best_epoch !== null && data.best_epoch !== undefined) kept.textContent = `Kept the adapter of epoch ${data.best_epoch} (lowest validation loss).`;
  const list = document.querySelector("[data-job-events]");
  if (list) {
    list.replaceChildren(...data.events.map((e) => {
      const li = document.createElement("li");
      li.textContent = `${e.at} ${e.level}: ${e.message}`;
      return li;
    }));
  }
  if (!data.finished) setTimeout(() => lossChart(figure), 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-report-chart]").forEach(reportChart);
  document.querySelectorAll("[data-loss-chart]").forEach(lossChart);
  document.querySelectorAll("[data-activity-chart]").forEach(drawActivity);
});
