// LEADER web page: pick codes, ask /v1/recommend, show drugs and DDI warnings.
// Plain JS, no external resources (works offline). Text from the server is only ever
// inserted with textContent, never as HTML.
"use strict";

const KINDS = ["diagnosis", "procedure"];
const selected = { diagnosis: [], procedure: [] };
const names = { diagnosis: {}, procedure: {} };
const tokenInput = document.getElementById("token");
const statusLine = document.getElementById("status");

tokenInput.value = sessionStorage.getItem("leader-token") || "";
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("leader-token", tokenInput.value);
  loadModelInfo();
});

function headers() {
  const out = { "Content-Type": "application/json" };
  if (tokenInput.value) out["Authorization"] = "Bearer " + tokenInput.value;
  return out;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

async function explain(response) {
  if (response.status === 401) return "this service needs an access token (field above)";
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      // the service's one error shape: {"detail": [{"path", "message"}]}
      return body.detail.map((d) => (d.path ? d.path + ": " : "") + d.message).join("; ");
    }
    return body.detail || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

// ------------------------------------------------------------------ code pickers
// Tokens that all contain a digit (4019 25000, V5861, A10A) are codes, not words of a name.
function looksLikeCodes(text, minTokens) {
  const tokens = text.split(/[\s,;]+/).filter(Boolean);
  return tokens.length >= minTokens && tokens.every((t) => /\d/.test(t));
}

function renderChips(kind) {
  const box = document.getElementById(kind + "-chips");
  box.replaceChildren();
  for (const code of selected[kind]) {
    const chip = el("span", null, "chip");
    chip.dataset.code = code;
    const label = names[kind][code] ? code + " · " + names[kind][code] : code;
    chip.appendChild(el("span", label));
    const remove = el("button", "×");
    remove.type = "button";
    remove.title = "remove " + code;
    remove.addEventListener("click", () => {
      selected[kind] = selected[kind].filter((c) => c !== code);
      renderChips(kind);
    });
    chip.appendChild(remove);
    box.appendChild(chip);
  }
}

function addCodes(kind, codes) {
  for (const raw of codes) {
    const code = raw.trim();
    if (code && !selected[kind].includes(code)) selected[kind].push(code);
  }
  renderChips(kind);
}

function setupPicker(kind) {
  const input = document.getElementById(kind + "-input");
  const list = document.getElementById(kind + "-suggestions");
  let timer = null;
  let active = -1;
  let asked = 0;

  function close() { list.replaceChildren(); active = -1; }

  function highlight(i) {
    const items = list.querySelectorAll("li");
    items.forEach((li, j) => li.classList.toggle("active", j === i));
    active = i;
  }

  async function suggest() {
    const q = input.value.trim();
    if (!q || /[,;]/.test(q) || looksLikeCodes(q, 2)) { close(); return; }
    const ticket = ++asked;
    const url = "/v1/codes?kind=" + kind + "&limit=15&q=" + encodeURIComponent(q);
    const response = await fetch(url, { headers: headers() });
    if (ticket !== asked) return;  // a newer keystroke won
    if (!response.ok) { close(); setStatus(await explain(response), true); return; }
    const body = await response.json();
    close();
    for (const item of body.codes) {
      names[kind][item.code] = item.name;
      const li = el("li", item.code + " — " + item.name);
      li.setAttribute("role", "option");
      li.dataset.code = item.code;
      li.addEventListener("mousedown", (event) => {
        event.preventDefault();
        addCodes(kind, [item.code]);
        input.value = "";
        close();
      });
      list.appendChild(li);
    }
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(suggest, 120);
  });
  input.addEventListener("keydown", (event) => {
    const items = list.querySelectorAll("li");
    if (event.key === "ArrowDown" && items.length) {
      event.preventDefault();
      highlight(Math.min(active + 1, items.length - 1));
    } else if (event.key === "ArrowUp" && items.length) {
      event.preventDefault();
      highlight(Math.max(active - 1, 0));
    } else if (event.key === "Enter") {
      event.preventDefault();
      const text = input.value.trim();
      if (active >= 0 && items[active]) {
        addCodes(kind, [items[active].dataset.code]);
      } else if (!text) {
        return;
      } else if (looksLikeCodes(text, 1) || /[,;]/.test(text)) {
        addCodes(kind, text.split(/[\s,;]+/));  // pasted codes
      } else if (items.length) {
        addCodes(kind, [items[0].dataset.code]);  // words of a name: the best match
      } else {
        setStatus("no " + kind + " code matches '" + text + "'", true);
        return;
      }
      input.value = "";
      clearTimeout(timer);
      asked++;
      close();
    } else if (event.key === "Escape") {
      close();
    }
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
}

// ------------------------------------------------------------------ recommending
function drugLabel(drug) {
  return drug.name && drug.name !== drug.code ? drug.code + " (" + drug.name + ")" : drug.code;
}

function render(result) {
  document.getElementById("output").hidden = false;
  const tbody = document.querySelector("#results tbody");
  tbody.replaceChildren();
  for (const drug of result.ranked) {
    const row = el("tr", null, drug.recommended ? "recommended" : "");
    row.appendChild(el("td", drug.code));
    row.appendChild(el("td", drug.name));
    const cell = el("td", null, "probability");
    const bar = el("span", null, "bar");
    bar.style.width = Math.round(drug.probability * 120) + "px";
    cell.appendChild(bar);
    cell.appendChild(el("span", (drug.probability * 100).toFixed(1) + " %"));
    row.appendChild(cell);
    row.appendChild(el("td", drug.recommended ? "yes" : ""));
    tbody.appendChild(row);
  }

  const warnings = document.getElementById("ddi-warnings");
  warnings.replaceChildren();
  for (const w of result.ddi_warnings) {
    warnings.appendChild(el("div", "Drug-drug interaction: " + drugLabel(w.drugs[0]) + " and " +
      drugLabel(w.drugs[1]) + " (source: " + w.source + ")", "warning"));
  }
  for (const w of result.withheld_for_ddi || []) {
    warnings.appendChild(el("div", "Withheld by the DDI-safe selection: " + drugLabel(w) +
      " interacts with " + w.interacts_with.join(", "), "warning"));
  }
  if (!result.ddi_warnings.length && !(result.withheld_for_ddi || []).length) {
    warnings.appendChild(el("p", "No known interaction among the recommended drugs.", "hint"));
  }

  const unknown = document.getElementById("unknown");
  unknown.replaceChildren();
  if (result.unknown_codes.length) {
    unknown.appendChild(el("p", "Ignored (unknown to the model): " +
      result.unknown_codes.map((u) => u.kind + " " + u.code).join(", ")));
  }
  document.getElementById("threshold").textContent =
    "Recommended: probability ≥ " + result.threshold + " (the model's threshold). " +
    result.recommended.length + " drug(s) recommended.";
}

async function recommend() {
  if (!selected.diagnosis.length && !selected.procedure.length) {
    setStatus("add at least one diagnosis or procedure code", true);
    return;
  }
  setStatus("asking the model…", false);
  const patient = {
    visits: [{ diagnoses: selected.diagnosis, procedures: selected.procedure }],
  };
  const safe = document.getElementById("ddi-safe").checked;
  const response = await fetch("/v1/recommend?top=30&ddi_safe=" + safe, {
    method: "POST",
    headers: headers(),
    body: JSON.stringify(patient),
  });
  if (!response.ok) { setStatus(await explain(response), true); return; }
  render(await response.json());
  setStatus("done", false);
}

async function loadModelInfo() {
  const footer = document.getElementById("model-info");
  const response = await fetch("/v1/model", { headers: headers() });
  if (!response.ok) { footer.textContent = "Model details: " + (await explain(response)); return; }
  const info = await response.json();
  const sizes = Object.entries(info.vocabulary).map(([k, n]) => n + " " + k + " codes").join(", ");
  footer.textContent = "leader " + info.version + " · run " + (info.run || "?") + " · " + sizes +
    " · DDI data: " + info.ddi.source + " · research tool, not medical advice";
}

KINDS.forEach(setupPicker);
document.getElementById("recommend").addEventListener("click", recommend);
document.getElementById("clear").addEventListener("click", () => {
  KINDS.forEach((k) => { selected[k] = []; renderChips(k); });
  document.getElementById("output").hidden = true;
  setStatus("", false);
});
loadModelInfo();
