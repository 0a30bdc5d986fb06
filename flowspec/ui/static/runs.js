// The runs list: the server sends every change of a run created since the page loaded as a
// `new-run` event. The first one adds its row at the top (htmx's swap); later ones, and any sent
// again after a reconnection, replace that row instead of adding another.
document.body.addEventListener("htmx:sseBeforeMessage", (event) => {
  if (event.detail.type !== "new-run") return;
  const found = /id="(run-[0-9a-f]+)"/.exec(event.detail.data);
  const row = found && document.getElementById(found[1]);
  if (!row) return;
  event.preventDefault();
  row.insertAdjacentHTML("afterend", event.detail.data);
  row.remove();
  htmx.process(document.getElementById(found[1]));
});
