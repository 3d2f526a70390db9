// Live notifications on every page of a logged-in user, from the push service
// (Server-Sent Events through the load balancer). EventSource reconnects by itself
// and sends Last-Event-ID, so nothing is missed while it was away. From page to
// page, the tab keeps the newest id seen and the last few fresh notifications
// (sessionStorage): the next page's stream resumes after that id, and the tray
// shows again what arrived a moment ago — also on the page that came just before
// a redirect.
(() => {
  const notes = document.getElementById("notes");
  if (!notes || !window.EventSource) return;
  const list = document.getElementById("notifications"); // the account page's list
  const live = document.getElementById("live");
  const text = { "rsvp.created": "You have a seat", "rsvp.cancelled": "Your seat is given back",
                 "email.sent": "Confirmation mail sent", "job.finished": "A job finished" };
  const AFTER = "bakery.notes.after";
  const RECENT = "bakery.notes.recent";
  // How long a notification stays in the tray, and how many are shown.
  const FRESH_MS = 2 * 60 * 1000;
  const SHOWN = 3;
  const words = (n) => `${text[n.kind] || n.kind} · ${new Date(n.created_at).toLocaleString()}`;
  const fresh = (n) => Date.now() - new Date(n.created_at).getTime() <= FRESH_MS;
  let recent = [];
  try { recent = JSON.parse(sessionStorage.getItem(RECENT) || "[]").filter(fresh); } catch (_) {}
  const draw = () => {
    notes.replaceChildren(...recent.slice(0, SHOWN).map((n) => {
      const item = document.createElement("li");
      item.textContent = words(n);
      return item;
    }));
  };
  const arrived = (n) => {
    if (list && n.id > Number(list.dataset.after || 0)) {
      document.getElementById("no-notifications")?.remove();
      const item = document.createElement("li");
      item.textContent = words(n);
      list.prepend(item);
    }
    if (!fresh(n) || recent.some((r) => r.id === n.id)) return;
    recent = [n, ...recent].sort((a, b) => b.id - a.id).slice(0, SHOWN);
    sessionStorage.setItem(RECENT, JSON.stringify(recent));
    draw();
  };
  draw();
  // The account page shows what came before it was rendered; other pages follow on
  // from the newest this tab has seen.
  const after = (list && list.dataset.after) || sessionStorage.getItem(AFTER) || "0";
  const stream = new EventSource(`/api/notifications/stream?after=${encodeURIComponent(after)}`);
  if (live) {
    stream.onopen = () => { live.textContent = "(live)"; };
    stream.onerror = () => { live.textContent = "(reconnecting…)"; };
  }
  for (const kind of Object.keys(text)) {
    stream.addEventListener(kind, (e) => {
      if (e.lastEventId) sessionStorage.setItem(AFTER, e.lastEventId);
      arrived(JSON.parse(e.data));
    });
  }
})();
