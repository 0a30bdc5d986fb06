// Paints one cell per mapped child on a canvas, straight into its pixels: 100 000 children are
// one ImageData write, not 100 000 draw calls.
export const COLOURS = {
  Success: [46, 157, 87], Failed: [214, 69, 65], TriggerFailed: [214, 69, 65], Cancelled: [138, 143, 152],
  Skipped: [138, 143, 152], Running: [47, 116, 208], Retrying: [47, 116, 208], Pending: [217, 162, 27],
};
const OTHER = [155, 89, 182];
const DIMMED = [230, 232, 236];

export function paintHeatmap(canvas, data, only) {
  const count = data.codes.length;
  const width = canvas.clientWidth || canvas.width;
  const cell = count > 20000 ? 3 : count > 2000 ? 6 : count > 200 ? 10 : 16;
  const columns = Math.max(1, Math.floor(width / cell));
  const rows = Math.max(1, Math.ceil(count / columns));
  canvas.width = columns * cell;
  canvas.height = rows * cell;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  const pixels = image.data;
  const colours = data.states.map((s) => (only && s !== only ? DIMMED : COLOURS[s] || OTHER));
  const gap = cell > 4 ? 1 : 0;
  for (let i = 0; i < count; i++) {
    const [r, g, b] = colours[data.codes.charCodeAt(i) - 48];
    const x0 = (i % columns) * cell, y0 = Math.floor(i / columns) * cell;
    for (let y = y0; y < y0 + cell - gap; y++) {
      let p = (y * canvas.width + x0) * 4;
      for (let x = 0; x < cell - gap; x++, p += 4) {
        pixels[p] = r; pixels[p + 1] = g; pixels[p + 2] = b; pixels[p + 3] = 255;
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.cell = cell;
  canvas.columns = columns;
  return { cell, columns, rows };
}

export function cellAt(canvas, event) {
  if (!canvas.cell) return -1;
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const x = Math.floor(((event.clientX - box.left) * scale) / canvas.cell);
  const y = Math.floor(((event.clientY - box.top) * scale) / canvas.cell);
  if (x < 0 || x >= canvas.columns || y < 0) return -1;
  return y * canvas.columns + x;
}
