// Live notifications from the push service (Server-Sent Events through the load
// balancer). EventSource reconnects by itself and sends Last-Event-ID, so nothing
// is missed while it was away.
(() => {
  const list = document.getElementById("notifications");
  const live = document.getElementById("live");
  const text = { "rsvp.created": "You have a seat", "rsvp.cancelled": "Your seat is given back",
                 "email.sent": "Confirmation mail sent", "job.finished": "A job finished" };
  const show = (n) => {
    document.getElementById("no-notifications")?.remove();
    const item = document.createElement("li");
    item.textContent = `${text[n.kind] || n.kind} · ${new Date(n.created_at).toLocaleString()}`;
    list.prepend(item);
  };
  // The page shows what came before it was rendered; follow on from there.
  const after = list.dataset.after;
  const stream = new EventSource("/api/notifications/stream" + (after ? `?after=${after}` : ""));
  stream.onopen = () => { live.textContent = "(live)"; };
  stream.onerror = () => { live.textContent = "(reconnecting…)"; };
  for (const kind of Object.keys(text)) {
    stream.addEventListener(kind, (e) => show(JSON.parse(e.data)));
  }
})();
