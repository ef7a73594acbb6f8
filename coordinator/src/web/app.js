// gramzoom's dashboard: keeps a page live from its Server-Sent Events, and asks before actions.
// Each event's data is an element id, the digest of the new content, then that content (for an
// <img>, its new address), a newline apart. An element already holding content of that digest
// (its data-v) is left alone, so nothing is re-created that did not change. No framework, no
// build step.
"use strict";

function connect(url) {
  const events = new EventSource(url);
  events.onmessage = (e) => {
    const a = e.data.indexOf("\n");
    const b = e.data.indexOf("\n", a + 1);
    if (a < 0 || b < 0) return;
    const el = document.getElementById(e.data.slice(0, a));
    const version = e.data.slice(a + 1, b);
    const value = e.data.slice(b + 1);
    if (!el || el.dataset.v === version) return;
    el.dataset.v = version;
    if (el.tagName === "IMG") {
      if (value) {
        // Swap only once the new frame has loaded: no flash of an empty box.
        const next = new Image();
        next.onload = () => { el.src = value; };
        next.src = value;
      }
    } else {
      el.innerHTML = value;
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.querySelector("main[data-events]");
  if (main) connect(main.dataset.events);
  document.addEventListener("submit", (e) => {
    const question = e.target.dataset && e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });
});
