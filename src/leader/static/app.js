// LEADER web page: a whole patient (profile, earlier visits, this visit), ask
// /v1/recommend?explain=true, show drugs, DDI warnings and why each drug.
// Plain JS, no external resources (works offline). Text from the server is only ever
// inserted with textContent, never as HTML.
"use strict";

const KINDS = ["diagnosis", "procedure"];
const KIND_LABELS = {
  diagnosis: "Diagnoses (ICD-9)", procedure: "Procedures (ICD-9)", medication: "Drugs given (ATC-3)",
};
const selected = { diagnosis: [], procedure: [] };  // this visit
const earlier = [];  // earlier visits, oldest first: {diagnosis, procedure, medication}
let profileFields = [];
let modelInfo = null;  // GET /v1/model
const names = { diagnosis: {}, procedure: {}, medication: {} };
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

function renderChips(kind, store, box) {
  store = store || selected;
  box = box || document.getElementById(kind + "-chips");
  box.replaceChildren();
  for (const code of store[kind]) {
    const chip = el("span", null, "chip");
    chip.dataset.code = code;
    const label = names[kind][code] ? code + " · " + names[kind][code] : code;
    chip.appendChild(el("span", label));
    const remove = el("button", "×");
    remove.type = "button";
    remove.title = "remove " + code;
    remove.addEventListener("click", () => {
      store[kind] = store[kind].filter((c) => c !== code);
      renderChips(kind, store, box);
    });
    chip.appendChild(remove);
    box.appendChild(chip);
  }
}

function setupPicker(kind, input, list, box, store) {
  input = input || document.getElementById(kind + "-input");
  list = list || document.getElementById(kind + "-suggestions");
  box = box || document.getElementById(kind + "-chips");
  store = store || selected;
  function addCodes(_, codes) {
    for (const raw of codes) {
      const code = raw.trim();
      if (code && !store[kind].includes(code)) store[kind].push(code);
    }
    renderChips(kind, store, box);
  }
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

// ------------------------------------------------------------------ earlier visits, profile
function renderEarlier() {
  const box = document.getElementById("earlier-visits");
  box.replaceChildren();
  earlier.forEach((visit, v) => {
    const fieldset = el("fieldset", null, "visit");
    fieldset.dataset.visit = String(v);
    const legend = el("legend", "Earlier visit " + (v + 1) + " ");
    const remove = el("button", "remove", "secondary");
    remove.type = "button";
    remove.id = "visit" + v + "-remove";
    remove.addEventListener("click", () => { earlier.splice(v, 1); renderEarlier(); });
    legend.appendChild(remove);
    fieldset.appendChild(legend);
    for (const kind of ["diagnosis", "procedure", "medication"]) {
      const section = el("div", null, "kind");
      const id = "visit" + v + "-" + kind;
      const label = el("label", KIND_LABELS[kind]);
      label.htmlFor = id + "-input";
      const picker = el("div", null, "picker");
      const input = el("input");
      input.id = id + "-input";
      input.type = "text";
      input.autocomplete = "off";
      const list = el("ul", null, "suggestions");
      list.id = id + "-suggestions";
      list.setAttribute("role", "listbox");
      picker.append(input, list);
      const chips = el("div", null, "chips");
      chips.id = id + "-chips";
      section.append(label, picker, chips);
      fieldset.appendChild(section);
      setupPicker(kind, input, list, chips, visit);
      renderChips(kind, visit, chips);
    }
    box.appendChild(fieldset);
  });
}

function renderProfile(fields) {
  profileFields = fields;
  const box = document.getElementById("profile-fields");
  const kept = {};  // values typed before the model details were (re)loaded
  for (const input of box.querySelectorAll("input")) kept[input.id] = input.value;
  box.replaceChildren();
  for (const field of fields) {
    const label = el("label", field.replace(/_/g, " ") + " ");
    const input = el("input");
    input.id = "profile-" + field;
    input.type = "text";
    input.autocomplete = "off";
    input.placeholder = "unknown";
    input.maxLength = 200;
    input.value = kept[input.id] || "";
    label.appendChild(input);
    box.appendChild(label);
  }
  document.getElementById("profile").hidden = !fields.length;
}

function patientRecord() {
  const visits = earlier.map((v) => ({
    diagnoses: v.diagnosis, procedures: v.procedure, medications: v.medication,
  }));
  visits.push({ diagnoses: selected.diagnosis, procedures: selected.procedure });
  const record = { visits: visits };
  const profile = {};
  for (const field of profileFields) {
    const value = document.getElementById("profile-" + field).value.trim();
    if (value) profile[field] = value;
  }
  if (Object.keys(profile).length) record.profile = profile;
  return record;
}

// ------------------------------------------------------------------ recommending
function itemLabel(item, visits) {
  if (item.kind === "profile") return item.name;
  const what = item.name && item.name !== item.code ? item.code + " " + item.name : item.code;
  if (item.current || item.visit === null) return what;
  const kind = item.kind === "medication" ? "drug " : "";
  return "earlier visit " + (item.visit + 1) + ": " + kind + what;
}

function becauseRow(explanation, columns) {
  const row = el("tr", null, "because");
  const cell = el("td");
  cell.colSpan = columns;
  cell.appendChild(el("strong", "because: "));
  if (!explanation || !explanation.because.length) {
    cell.appendChild(el("span", "no single item of the record changes this drug's probability"));
  } else {
    explanation.because.forEach((item, i) => {
      if (i) cell.appendChild(el("span", ", "));
      const value = item.contribution;
      const sign = value >= 0 ? "+" : "−";
      cell.appendChild(el("span", itemLabel(item) + " "));
      cell.appendChild(el("span", sign + Math.abs(value).toFixed(2), value >= 0 ? "up" : "down"));
    });
    const unit = explanation.unit === "logit" ? " (logit units, " : " (probability, ";
    cell.appendChild(el("span", unit + explanation.method + ")", "unit"));
  }
  row.appendChild(cell);
  return row;
}

function renderSet(result, vocabularySize) {
  // The conformal set of /v1/recommend?miss_rate=a: {"miss_rate", "threshold", "full_set",
  // "calibration_visits", "set": [drug, ...]} (leader.conformal), absent without miss_rate.
  const info = document.getElementById("set-info");
  const conformal = result.conformal;
  document.getElementById("set-column").hidden = !conformal;
  if (!conformal) { info.hidden = true; return; }
  const visits = conformal.calibration_visits + " calibration visit" +
    (conformal.calibration_visits === 1 ? "" : "s");
  const head = "Drug set for a miss rate ≤ " + conformal.miss_rate + " (guaranteed in " +
    "expectation over " + visits + "): ";
  let body;
  if (conformal.full_set) {
    body = "the full vocabulary (all " + conformal.set.length + " drugs): " + visits +
      " are too few for a smaller set at this miss rate.";
  } else if (!conformal.set.length) {
    body = "empty (no drug is needed to stay under this miss rate).";
  } else {
    body = conformal.set.map(drugLabel).join(", ") + " (" + conformal.set.length + " of " +
      vocabularySize + " drugs; " + (conformal.set.length > result.ranked.length ?
      "those among the " + result.ranked.length + " listed are marked)." :
      "marked in the list).");
  }
  info.textContent = head + body;
  info.hidden = false;
}

function drugLabel(drug) {
  return drug.name && drug.name !== drug.code ? drug.code + " (" + drug.name + ")" : drug.code;
}

function render(result) {
  document.getElementById("output").hidden = false;
  const tbody = document.querySelector("#results tbody");
  tbody.replaceChildren();
  const why = {};
  for (const e of result.explanations || []) why[e.drug] = e;
  const inSet = result.conformal ? new Set(result.conformal.set.map((d) => d.code)) : null;
  for (const drug of result.ranked) {
    const member = inSet !== null && inSet.has(drug.code);
    const row = el("tr", null, "drug" + (drug.recommended ? " recommended" : "") +
      (member ? " in-set" : ""));
    row.dataset.code = drug.code;
    row.title = "click: why this drug";
    row.addEventListener("click", () => {
      const next = row.nextElementSibling;
      if (next && next.classList.contains("because")) { next.remove(); return; }
      row.after(becauseRow(why[drug.code], 6));
    });
    row.appendChild(el("td", drug.code));
    row.appendChild(el("td", drug.name));
    const cell = el("td", null, "probability");
    const bar = el("span", null, "bar");
    bar.style.width = Math.round(drug.probability * 120) + "px";
    cell.appendChild(bar);
    cell.appendChild(el("span", (drug.probability * 100).toFixed(1) + " %"));
    if (drug.score !== undefined) cell.title = "model's own score: " + drug.score;
    row.appendChild(cell);
    row.appendChild(el("td", drug.recommended ? "yes" : ""));
    const setCell = el("td", member ? "in set" : "", member ? "in-set" : "");
    setCell.hidden = inSet === null;
    row.appendChild(setCell);
    row.appendChild(el("td", why[drug.code] ? "why?" : "", "why"));
    tbody.appendChild(row);
  }
  renderSet(result, modelInfo ? modelInfo.vocabulary.medication : "?");

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
  // With a calibration the threshold applies to the model's own score, not the probability.
  const calibrated = result.calibration !== undefined;
  document.getElementById("threshold").textContent = "Recommended: " +
    (calibrated ? "model score" : "probability") + " ≥ " + result.threshold +
    " (the model's threshold). " + result.recommended.length + " drug(s) recommended.";
  const calibration = document.getElementById("calibration-info");
  calibration.textContent = calibrated ? "Probabilities are calibrated (" + result.calibration +
    ", calibration.json beside the model); hover one for the model's own score." : "";
  calibration.hidden = !calibrated;
}

async function recommend() {
  if (!selected.diagnosis.length && !selected.procedure.length) {
    setStatus("add at least one diagnosis or procedure code", true);
    return;
  }
  setStatus("asking the model…", false);
  const patient = patientRecord();
  const safe = document.getElementById("ddi-safe").checked;
  let query = "?top=30&explain=true&explain_items=5&ddi_safe=" + safe;
  const missRate = document.getElementById("miss-rate").value;
  if (missRate && !document.getElementById("miss-rate-control").hidden) {
    query += "&miss_rate=" + encodeURIComponent(missRate);
  }
  const response = await fetch("/v1/recommend" + query, {
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
  modelInfo = info;
  renderProfile(info.profile_fields || []);
  // The miss-rate choice only for a model with a conformal risk curve (calibration.json).
  document.getElementById("miss-rate-control").hidden =
    info.conformal_visits === null || info.conformal_visits === undefined;
  const sizes = Object.entries(info.vocabulary).map(([k, n]) => n + " " + k + " codes").join(", ");
  footer.textContent = "leader " + info.version + " · run " + (info.run || "?") + " · " + sizes +
    " · DDI data: " + info.ddi.source +
    (info.calibration ? " · calibration: " + info.calibration : "") +
    (info.conformal_visits !== null && info.conformal_visits !== undefined ?
      " (" + info.conformal_visits + " calibration visits)" : "") +
    " · research tool, not medical advice";
}

KINDS.forEach((kind) => setupPicker(kind));
document.getElementById("add-visit").addEventListener("click", () => {
  earlier.push({ diagnosis: [], procedure: [], medication: [] });
  renderEarlier();
  document.getElementById("visit" + (earlier.length - 1) + "-diagnosis-input").focus();
});
document.getElementById("recommend").addEventListener("click", recommend);
document.getElementById("clear").addEventListener("click", () => {
  KINDS.forEach((k) => { selected[k] = []; renderChips(k); });
  earlier.length = 0;
  renderEarlier();
  for (const field of profileFields) document.getElementById("profile-" + field).value = "";
  document.getElementById("output").hidden = true;
  setStatus("", false);
});
loadModelInfo();
