// The operations page, live: the server sends each new picture as HTML (the same
// template the page was rendered with), so this only swaps it in.
(function () {
  var live = document.getElementById("ops-live");
  var state = document.getElementById("ops-state");
  if (!live || !window.EventSource) return;
  var source = new EventSource(live.getAttribute("data-live"));
  source.addEventListener("picture", function (event) {
    live.innerHTML = event.data;
    if (state) state.textContent = "(live)";
  });
  source.onerror = function () {
    if (state) state.textContent = "(reconnecting…)";
  };
})();
