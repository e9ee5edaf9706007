// Offline API docs: render /openapi.json without any external script.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function curl(path, method, op) {
  const base = location.origin + path;
  if (method !== "post") return "curl -H 'Authorization: Bearer $LEADER_TOKEN' '" + base + "'";
  return "curl -X POST -H 'Content-Type: application/json' " +
    "-H 'Authorization: Bearer $LEADER_TOKEN' '" + base + "' \\\n  -d '" +
    '{"visits": [{"diagnoses": ["4019", "25000"], "procedures": ["3893"]}]}' + "'";
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("description").textContent = spec.info.description || "";
  const box = document.getElementById("operations");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const card = el("section", null, "op");
      const head = el("h2");
      head.appendChild(el("span", method, "method"));
      head.appendChild(el("code", path));
      card.appendChild(head);
      if (op.summary) card.appendChild(el("p", op.summary));
      if (op.description) card.appendChild(el("p", op.description, "hint"));
      const params = op.parameters || [];
      if (params.length) {
        const list = el("ul");
        for (const p of params) {
          const schema = p.schema || {};
          const extra = schema.default !== undefined ? " (default " + schema.default + ")" : "";
          list.appendChild(el("li", p.name + " [" + p.in + ", " + (schema.type || "any") + "]" +
            extra + (p.description ? ": " + p.description : "")));
        }
        card.appendChild(el("h3", "Parameters"));
        card.appendChild(list);
      }
      const body = op.requestBody && op.requestBody.content["application/json"];
      if (body) {
        card.appendChild(el("h3", "Request body (JSON Schema)"));
        card.appendChild(el("pre", JSON.stringify(body.schema, null, 2)));
      }
      card.appendChild(el("h3", "Example"));
      card.appendChild(el("pre", curl(path, method, op)));
      box.appendChild(card);
    }
  }
}

main();
