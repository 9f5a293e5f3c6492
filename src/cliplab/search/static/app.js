// The search page: text box, image drop zone, and a grid of results; a click on a result searches
// for images like it. Everything is built with textContent (never innerHTML): captions are data.
"use strict";

const K = 24;
const $ = (selector) => document.querySelector(selector);

async function run(url, options, label) {
  const grid = $("#results");
  grid.dataset.state = "loading";
  $("#status").textContent = "Searching\u2026";
  let body;
  try {
    const response = await fetch(url, options);
    body = await response.json();
    if (!response.ok) {
      throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    }
  } catch (error) {
    $("#status").textContent = error.message;
    grid.dataset.state = "error";
    return;
  }
  show(body.results, label, body.took_ms);
}

function card(result) {
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.dataset.id = result.id;
  figure.dataset.source = result.source;
  figure.title = "Find images like this one";
  const image = document.createElement("img");
  image.src = result.thumbnail;
  image.alt = result.caption || result.source;
  const caption = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  const text = document.createElement("span");
  text.className = "caption";
  text.textContent = result.caption || result.source.split("/").pop();
  caption.append(score, text);
  figure.append(image, caption);
  figure.addEventListener("click", () => run(`/api/similar/${result.id}?k=${K}`, {}, `images like #${result.id}`));
  return figure;
}

function show(results, label, tookMs) {
  const grid = $("#results");
  grid.replaceChildren(...results.map(card));
  $("#status").textContent = `${results.length} results for ${label} (${tookMs.toFixed(0)} ms)`;
  grid.dataset.query = label;
  grid.dataset.state = "done";
}

function searchImage(file) {
  const form = new FormData();
  form.append("file", file);
  run(`/api/search/image?k=${K}`, { method: "POST", body: form }, `image ${file.name}`);
}

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = $("#q").value.trim();
  if (q) run(`/api/search?k=${K}&q=${encodeURIComponent(q)}`, {}, `\u201c${q}\u201d`);
});

$("#file").addEventListener("change", (event) => {
  if (event.target.files.length) searchImage(event.target.files[0]);
});

const drop = $("#drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) searchImage(event.dataTransfer.files[0]);
});

fetch("/api/info").then((r) => r.json()).then((info) => {
  $("#info").textContent = `${info.n.toLocaleString()} images \u00b7 ${info.kind} index`;
});
