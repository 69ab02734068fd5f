// The page of transformer-serve: translate a sentence, then draw its attention maps.
// Plain JavaScript, no libraries: it talks to POST /translate, POST /explain and GET /info.
"use strict";

// Each tab: which map of the /explain JSON it draws, what labels its rows and columns, and the
// section of docs/walkthrough.md (in the project's repository) that explains it.
const VIEWS = {
  cross: {
    map: "cross",
    axes: "rows: the pieces the decoder produced · columns: the source pieces",
    rows: "target_pieces",
    columns: "source_pieces",
    text: "Each row is a piece the decoder produced; it shows how much that step read each " +
      "source piece (the encoder's output). This is where the model aligns words.",
    section: "11-cross-attention",
    title: "§ 11. Cross-attention",
  },
  decoder_self: {
    map: "decoder_self",
    axes: "rows and columns: the pieces the decoder read, <s> first",
    rows: "decoder_input_pieces",
    columns: "decoder_input_pieces",
    text: "Each row is what a decoder position read; it attends only to itself and the " +
      "positions before it (the causal mask leaves the upper triangle empty).",
    section: "10-the-decoders-masked-self-attention",
    title: "§ 10. The decoder's masked self-attention",
  },
  encoder_self: {
    map: "encoder_self",
    axes: "rows and columns: the source pieces, </s> last",
    rows: "source_pieces",
    columns: "source_pieces",
    text: "Each row is a source piece attending to every source piece, so that its vector " +
      "is informed by the whole sentence.",
    section: "9-the-encoder",
    title: "§ 9. The encoder",
  },
};

const state = { explanation: null, view: "cross", layer: 0, head: "average" };
const $ = (id) => document.getElementById(id);

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `${path} answered ${response.status}`);
  return data;
}

async function describeModel() {
  try {
    const info = await (await fetch("/info")).json();
    const m = info.model;
    $("model-info").textContent =
      `d_model ${m.d_model}, ${m.num_encoder_layers} encoder + ${m.num_decoder_layers} ` +
      `decoder layers, ${m.num_heads} heads, ${info.vocabulary.target} target pieces; ` +
      `${info.checkpoint || "checkpoint"}; beam size ${info.decoding.beam_size} by default.` +
      engineNote(info);
    $("beam-size").placeholder = info.decoding.beam_size;
    $("beam-size").max = info.limits.max_beam_size;
    $("nbest").max = info.limits.max_beam_size;
  } catch (error) {
    $("model-info").textContent = `cannot read /info: ${error.message}`;
  }
}

// Which engine translates; the attention is always the PyTorch model's (/info explain_engine).
function engineNote(info) {
  if (!info.engine || info.engine === info.explain_engine) return "";
  const exported = info.export ? ` (${info.export.quantization} export)` : "";
  return ` Translations by ${info.engine}${exported}; the attention below comes from the ` +
    `${info.explain_engine} model of that checkpoint, whose translation may differ slightly.`;
}

async function translate(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  const nbest = Number($("nbest").value) || 1;
  let beam = Number($("beam-size").value) || Number($("beam-size").placeholder) || nbest;
  beam = Math.max(beam, nbest);
  $("translate").disabled = true;
  $("error").hidden = true;
  try {
    const [translated, explanation] = await Promise.all([
      post("/translate", { text, nbest, beam_size: beam }),
      post("/explain", { text, beam_size: beam }),
    ]);
    showTranslation(translated.translations[0]);
    state.explanation = explanation;
    showView(state.view);
    $("result").hidden = false;
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
  } finally {
    $("translate").disabled = false;
  }
}

function showTranslation(result) {
  $("translation").textContent = result.text;
  const list = $("nbest-list");
  list.replaceChildren();
  for (const hypothesis of result.nbest) {
    const item = document.createElement("li");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hypothesis.score.toFixed(4);
    item.append(hypothesis.text, score);
    list.append(item);
  }
}

function showView(name) {
  state.view = name;
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  }
  const view = VIEWS[name];
  const layers = state.explanation[view.map];
  state.layer = Math.min(state.layer, layers.length - 1);
  fillSelect($("layer"), layers.map((_, i) => [String(i), `${i + 1} of ${layers.length}`]),
    String(state.layer));
  const heads = layers[0].map((_, i) => [String(i), `head ${i + 1}`]);
  if (state.head !== "average" && Number(state.head) >= heads.length) state.head = "average";
  fillSelect($("head"), [["average", "average of heads"], ...heads], state.head);
  showLegend(view);
  draw();
}

function fillSelect(select, options, chosen) {
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  select.value = chosen;
}

function showLegend(view) {
  const link = document.createElement("a");
  link.href = `/docs/walkthrough.md#${view.section}`;
  link.textContent = `docs/walkthrough.md ${view.title}`;
  link.title = "the walkthrough in the project's repository, " +
    `docs/walkthrough.md#${view.section}`;
  $("legend").replaceChildren(`${view.text} Darker means more attention; each row sums to 1. ` +
    "Explained in ", link, ".");
}

// The map drawn: one layer, one head or the average of its heads, as rows of weights.
function weights() {
  const heads = state.explanation[VIEWS[state.view].map][state.layer];
  if (state.head !== "average") return heads[Number(state.head)];
  return heads[0].map((row, q) =>
    row.map((_, k) => heads.reduce((sum, head) => sum + head[q][k], 0) / heads.length));
}

function draw() {
  const view = VIEWS[state.view];
  const rows = state.explanation[view.rows];
  const columns = state.explanation[view.columns];
  const matrix = weights();
  const table = $("heatmap");
  table.dataset.view = state.view;
  table.dataset.layer = String(state.layer + 1);
  table.dataset.head = state.head;

  const header = document.createElement("tr");
  header.append(document.createElement("th"));
  for (const piece of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = piece;
    header.append(th);
  }
  const body = document.createElement("tbody");
  rows.forEach((piece, q) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = piece;
    tr.append(th);
    matrix[q].forEach((weight, k) => {
      const td = document.createElement("td");
      td.className = "cell";
      td.style.background = `rgba(var(--accent), ${weight.toFixed(3)})`;
      td.style.color = weight > 0.55 ? "white" : "inherit";
      td.textContent = weight >= 0.05 ? weight.toFixed(2).replace(/^0/, "") : "";
      td.title = `${piece} → ${columns[k]}: ${weight.toFixed(3)}`;
      tr.append(td);
    });
    tr.addEventListener("mouseenter", () => focusRow(q));
    body.append(tr);
  });
  const head = document.createElement("thead");
  head.append(header);
  table.replaceChildren(head, body);
  $("axes").textContent = view.axes;
  table.onmouseleave = () => focusRow(null);
}

// Hovering a row's piece highlights the column pieces it attends to, by how much.
function focusRow(q) {
  const table = $("heatmap");
  const columnHeads = table.querySelectorAll("thead th:not(:first-child)");
  table.querySelectorAll("tbody tr").forEach((tr, i) => tr.classList.toggle("active", i === q));
  if (q === null) {
    columnHeads.forEach((th) => { th.style.background = ""; th.classList.remove("attended"); });
    $("focus").textContent = "Hover over a row's piece to see what it attends to.";
    return;
  }
  const view = VIEWS[state.view];
  const row = weights()[q];
  const columns = state.explanation[view.columns];
  columnHeads.forEach((th, k) => {
    th.style.background = `rgba(var(--accent), ${(row[k] * 0.8).toFixed(3)})`;
    th.classList.toggle("attended", row[k] >= 0.05);
  });
  const top = row.map((weight, k) => [weight, columns[k]])
    .sort((a, b) => b[0] - a[0]).slice(0, 3)
    .map(([weight, piece]) => `${piece} ${weight.toFixed(2)}`);
  $("focus").textContent = `${state.explanation[view.rows][q]} attends most to: ${top.join(", ")}`;
}

$("form").addEventListener("submit", translate);
$("layer").addEventListener("change", (event) => { state.layer = Number(event.target.value); draw(); });
$("head").addEventListener("change", (event) => { state.head = event.target.value; draw(); });
for (const tab of document.querySelectorAll(".tabs button")) {
  tab.addEventListener("click", () => { if (state.explanation) showView(tab.dataset.view); });
}
describeModel();
