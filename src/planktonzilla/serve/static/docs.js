// Offline API documentation: renders /openapi.json as plain HTML (no CDN, no framework).
"use strict";

function node(tag, text, className) {
  const n = document.createElement(tag);
  if (text !== undefined && text !== null) n.textContent = text;
  if (className) n.className = className;
  return n;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.anyOf) return schema.anyOf.map(schemaText).join(" | ");
  if (schema.$ref) return schema.$ref.split("/").pop();
  let text = schema.type || "";
  if (schema.type === "array" && schema.items) text = `array of ${schemaText(schema.items)}`;
  if (schema.format) text += ` (${schema.format})`;
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push(`>= ${schema.minimum}`);
  if (schema.maximum !== undefined) bounds.push(`<= ${schema.maximum}`);
  if (schema.pattern) bounds.push(`matches ${schema.pattern}`);
  if (schema.default !== undefined) bounds.push(`default ${JSON.stringify(schema.default)}`);
  return bounds.length ? `${text}, ${bounds.join(", ")}` : text;
}

function operationSection(path, method, op) {
  const section = node("section", undefined, "operation");
  section.id = `${method}-${path}`.replace(/[^a-zA-Z0-9-]/g, "_");
  section.append(node("h2", `${method.toUpperCase()} ${path}`));
  if (op.summary) section.append(node("p", op.summary));
  if (op.description) section.append(node("p", op.description, "muted"));
  const params = op.parameters || [];
  if (params.length) {
    const table = node("table");
    const head = node("tr");
    for (const h of ["parameter", "in", "required", "type", "description"]) head.append(node("th", h));
    table.append(head);
    for (const p of params) {
      const row = node("tr");
      row.append(node("td", p.name), node("td", p.in), node("td", p.required ? "yes" : "no"));
      row.append(node("td", schemaText(p.schema)), node("td", p.description || (p.schema || {}).description || ""));
      table.append(row);
    }
    section.append(table);
  }
  if (op.requestBody) {
    for (const [type, content] of Object.entries(op.requestBody.content || {})) {
      const props = (content.schema || {}).properties || {};
      const fields = Object.entries(props).map(([name, s]) => `${name}: ${schemaText(s)}`);
      section.append(node("p", `Body (${type}): ${fields.join("; ") || schemaText(content.schema)}`));
    }
  }
  const responses = node("ul");
  for (const [code, r] of Object.entries(op.responses || {})) {
    responses.append(node("li", `${code}: ${r.description || ""}`));
  }
  section.append(node("h3", "Responses"), responses);
  return section;
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("api-version").textContent = `version ${spec.info.version}`;
  document.getElementById("api-description").append(node("p", spec.info.description || ""));
  const operations = document.getElementById("operations");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      operations.append(operationSection(path, method, op));
    }
  }
}

document.addEventListener("DOMContentLoaded", main);
