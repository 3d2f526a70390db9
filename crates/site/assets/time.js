// Dates in the reader's own time zone and words: each <time datetime> the server
// wrote in UTC is rewritten by the browser (without JavaScript, the UTC text stays).
(() => {
  for (const el of document.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      el.textContent = when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
      el.title = el.getAttribute("datetime");
    }
  }
})();
