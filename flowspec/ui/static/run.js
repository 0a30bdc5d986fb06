// The run page: mapped children as a canvas heatmap (one cell per child, coloured by state),
// refreshed when the task states change. A click on a cell shows that child's log lines.
import { paintHeatmap, cellAt } from "./heatmap.js";

const tip = document.getElementById("heat-tip");

async function load(canvas) {
  const response = await fetch(canvas.dataset.src, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  canvas.heat = await response.json();
  draw(canvas);
}

function draw(canvas) {
  const box = canvas.closest(".heat");
  const select = box.querySelector(".heat-filter");
  const data = canvas.heat;
  const known = new Set(Array.from(select.options).map((o) => o.value));
  for (const state of data.states) {
    if (!known.has(state)) select.add(new Option(state, state));
  }
  const started = performance.now();
  canvas.layout = paintHeatmap(canvas, data, select.value);
  canvas.dataset.painted = String(performance.now() - started);
  box.querySelector(".heat-count").textContent = `${data.codes.length} children`;
}

function indexAt(canvas, event) {
  const cell = cellAt(canvas, event);
  if (cell < 0 || !canvas.heat || cell >= canvas.heat.codes.length) return null;
  const data = canvas.heat;
  return { index: data.indexes ? data.indexes[cell] : cell, state: data.states[data.codes.charCodeAt(cell) - 48] };
}

function wire(canvas) {
  canvas.closest(".heat").querySelector(".heat-filter").addEventListener("change", () => draw(canvas));
  canvas.addEventListener("mousemove", (event) => {
    const hit = indexAt(canvas, event);
    if (!hit || !tip) { if (tip) tip.hidden = true; return; }
    tip.textContent = `${canvas.dataset.task}[${hit.index}]: ${hit.state}`;
    tip.style.left = `${event.clientX + 12}px`;
    tip.style.top = `${event.clientY + 12}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { if (tip) tip.hidden = true; });
  canvas.addEventListener("click", (event) => {
    const hit = indexAt(canvas, event);
    if (!hit) return;
    const form = document.getElementById("log-filter");
    form.elements.task.value = `${canvas.dataset.task}[${hit.index}]`;
    form.elements.q.value = "";
    htmx.trigger(form, "submit");
    document.getElementById("logs-title").scrollIntoView();
  });
  load(canvas);
}

// The heatmaps arrive with the task table, after the page (and again when the map grows).
htmx.onLoad((element) => {
  const found = element.matches?.("canvas.heatmap") ? [element] : element.querySelectorAll?.("canvas.heatmap") || [];
  found.forEach((canvas) => { if (!canvas.wired) { canvas.wired = true; wire(canvas); } });
});

let pending = null;
document.body.addEventListener("htmx:sseMessage", (event) => {
  if (event.detail.type !== "tasks" || pending) return;
  pending = setTimeout(() => {
    pending = null;
    document.querySelectorAll("canvas.heatmap").forEach((canvas) => { if (canvas.wired) load(canvas); });
  }, 500);
});
