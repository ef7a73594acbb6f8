// gramzoom's dashboard: keeps a page live from its Server-Sent Events, and asks before actions.
// Each event's data is an element id, a newline, then that element's new HTML (for an <img>,
// its new address). No framework, no build step.
"use strict";

function connect(url) {
  const events = new EventSource(url);
  events.onmessage = (e) => {
    const cut = e.data.indexOf("\n");
    if (cut < 0) return;
    const el = document.getElementById(e.data.slice(0, cut));
    const value = e.data.slice(cut + 1);
    if (!el) return;
    if (el.tagName === "IMG") {
      if (value && el.getAttribute("src") !== value) {
        // Swap only once the new frame has loaded: no flash of an empty box.
        const next = new Image();
        next.onload = () => { el.src = value; };
        next.src = value;
      }
    } else {
      el.innerHTML = value;
    }
    document.body.dataset.live = "on";
  };
  events.onerror = () => { document.body.dataset.live = "reconnecting"; };
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.querySelector("main[data-events]");
  if (main) connect(main.dataset.events);
  document.addEventListener("submit", (e) => {
    const question = e.target.dataset && e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });
});
