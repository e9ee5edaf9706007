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

function bounds(schema) {
  const parts = [];
  if (schema.enum) parts.push("one of " + schema.enum.join(", "));
  if (schema.minimum !== undefined) parts.push(">= " + schema.minimum);
  if (schema.exclusiveMinimum !== undefined) parts.push("> " + schema.exclusiveMinimum);
  if (schema.maximum !== undefined) parts.push("<= " + schema.maximum);
  if (schema.exclusiveMaximum !== undefined) parts.push("< " + schema.exclusiveMaximum);
  if (schema.maxLength !== undefined) parts.push("at most " + schema.maxLength + " characters");
  return parts.length ? ", " + parts.join(", ") : "";
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
          list.appendChild(el("li", p.name + " [" + p.in + ", " + (schema.type || "any") +
            bounds(schema) + "]" + extra + (p.description ? ": " + p.description : "")));
        }
        card.appendChild(el("h3", "Parameters"));
        card.appendChild(list);
      }
      const body = op.requestBody && op.requestBody.content["application/json"];
      if (body) {
        card.appendChild(el("h3", "Request body (JSON Schema)"));
        card.appendChild(el("pre", JSON.stringify(body.schema, null, 2)));
      }
      const answers = Object.entries(op.responses || {});
      if (answers.length) {
        const list = el("ul");
        for (const [status, answer] of answers) {
          list.appendChild(el("li", status + ": " + (answer.description || "")));
        }
        card.appendChild(el("h3", "Responses (errors: the Error schema)"));
        card.appendChild(list);
      }
      card.appendChild(el("h3", "Example"));
      card.appendChild(el("pre", curl(path, method, op)));
      box.appendChild(card);
    }
  }
}

main();
