"""The page at ``/``: type or paste texts, see each one's label and a probability bar per class.

Plain HTML, CSS and a little JavaScript in one response (nothing is fetched from elsewhere); the run's
facts are written in by the server, the classifications come from ``POST /v1/classify``.
"""

from __future__ import annotations

import html
import json
from typing import Any

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]


def _facts(info: dict[str, Any]) -> list[tuple[str, str]]:
    trainable = info.get("trainable_params")
    budget = info.get("budget")
    params = f"{trainable:,}" if isinstance(trainable, int) else "?"
    if isinstance(budget, int):
        params += f" of {budget:,} budget"
    facts = [("method", str(info.get("method"))), ("trainable parameters", params)]
    validation = info.get("validation") or {}
    key = "micro_f1" if validation.get("micro_f1") is not None else "accuracy"  # a multi-label run: micro F1
    if validation.get(key) is not None:
        text = f"{validation[key]:.1%}"
        low_high = validation.get(f"{key}_ci95")
        if low_high:
            text += f" (95% CI {100 * low_high[0]:.1f}–{low_high[1]:.1%}"
            text += f", n={validation['rows']:,})" if validation.get("rows") else ")"
        if validation.get("held_out") is False:  # the rows overlapped training or validation rows
            text += ", not held out"
        facts.append(("validation micro F1" if key == "micro_f1" else "validation accuracy", text))
    facts.append(("engine", f"{info.get('engine')} · {info.get('precision')}"))
    return facts


def render_page(info: dict[str, Any]) -> str:
    facts = "".join(
        f'<div class="fact"><span class="k">{html.escape(k)}</span><span class="v">{html.escape(v)}</span></div>'
        for k, v in _facts(info)
    )
    classes = list(info.get("classes") or [])
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(classes)}
    limits = info.get("limits") or {}
    placeholder = (
        "One text per line, e.g.\nStocks rallied after the earnings report.\nThe striker scored twice in the final."
    )
    return (
        PAGE.replace("{{TITLE}}", html.escape(str(info.get("name"))))
        .replace("{{BASE}}", html.escape(str(info.get("base_model"))))
        .replace("{{FACTS}}", facts)
        .replace("{{PLACEHOLDER}}", html.escape(placeholder))
        .replace("{{CLASSES}}", html.escape(", ".join(classes)))
        .replace("{{MAX_TEXTS}}", str(limits.get("texts_per_request", "")))
        # JSON inside <script>: "<" escaped so no text can close the script element.
        .replace("{{COLOURS}}", json.dumps(colours).replace("<", "\\u003c"))
    )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}} · lorabudget serve</title>
<style>
  :root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --accent: #3e4c59; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         background: var(--bg); }
  main { max-width: 920px; margin: 0 auto; padding: 28px 20px 40px; }
  header h1 { margin: 0; font-size: 24px; }
  header .sub { color: var(--muted); margin-top: 2px; font-size: 13px; word-break: break-all; }
  .facts { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0 20px; }
  .fact { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
  .fact .k { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
  .fact .v { font-weight: 600; }
  .panel { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px; }
  textarea { width: 100%; min-height: 110px; resize: vertical; font: inherit; padding: 10px; border-radius: 6px;
             border: 1px solid #cbd2d9; }
  textarea:focus { outline: 2px solid #9fb3c8; border-color: #9fb3c8; }
  .row { display: flex; align-items: center; gap: 12px; margin-top: 10px; }
  button { font: inherit; font-weight: 600; color: #fff; background: var(--accent); border: 0; border-radius: 6px;
           padding: 8px 18px; cursor: pointer; }
  button:disabled { opacity: .6; cursor: default; }
  .hint { color: var(--muted); font-size: 13px; }
  .error { color: #b42318; font-weight: 600; }
  #results { margin-top: 18px; display: grid; gap: 12px; }
  .result { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
  .result .text { color: var(--muted); font-size: 13px; margin-bottom: 8px; overflow-wrap: anywhere; }
  .result .label { font-size: 18px; font-weight: 700; margin-bottom: 8px; }
  .result .label .p { font-weight: 500; color: var(--muted); font-size: 14px; margin-left: 6px; }
  .bar { display: grid; grid-template-columns: 120px 1fr 56px; align-items: center; gap: 10px; margin: 4px 0;
         font-size: 13px; }
  .bar .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar .track { background: #eef1f4; border-radius: 4px; height: 14px; overflow: hidden; }
  .bar .fill { height: 100%; border-radius: 4px; }
  .bar .pct { text-align: right; font-variant-numeric: tabular-nums; }
  .bar.top .name { font-weight: 700; }
  footer { margin-top: 26px; color: var(--muted); font-size: 12px; }
  footer a { color: inherit; }
</style>
</head>
<body>
<main>
  <header>
    <h1>{{TITLE}}</h1>
    <div class="sub">{{BASE}} · classes: {{CLASSES}}</div>
  </header>
  <div class="facts">{{FACTS}}</div>
  <div class="panel">
    <textarea id="texts" placeholder="{{PLACEHOLDER}}" aria-label="texts to classify"></textarea>
    <div class="row">
      <button id="classify" type="button">Classify</button>
      <span id="status" class="hint">one text per line, at most {{MAX_TEXTS}} · Ctrl+Enter classifies</span>
    </div>
  </div>
  <div id="results" aria-live="polite"></div>
  <footer>lorabudget serve · <a href="/docs">API documentation</a> · <a href="/v1/model">/v1/model</a></footer>
</main>
<script>
const COLOURS = {{COLOURS}};
const input = document.getElementById("texts");
const button = document.getElementById("classify");
const status = document.getElementById("status");
const results = document.getElementById("results");

function element(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) { return (100 * p).toFixed(1) + "%"; }

function show(texts, answer) {
  results.replaceChildren();
  answer.results.forEach((result, i) => {
    const card = element("div", "result");
    card.append(element("div", "text", texts[i]));
    const label = element("div", "label");
    if (result.labels) {  // a multi-label run: its labels (maybe none), each bar marked when predicted
      label.append(element("span", "top", result.labels.length ? result.labels.join(", ") : "(no label)"));
    } else {
      label.append(element("span", "top", result.label), element("span", "p", percent(result.probability)));
    }
    card.append(label);
    for (const entry of result.probabilities) {
      const top = result.labels ? entry.predicted : entry.label === result.label;
      const bar = element("div", top ? "bar top" : "bar");
      const track = element("div", "track");
      const fill = element("div", "fill");
      fill.style.width = percent(entry.probability);
      fill.style.background = COLOURS[entry.label] || "#7b8794";
      track.append(fill);
      bar.append(element("span", "name", entry.label), track, element("span", "pct", percent(entry.probability)));
      card.append(bar);
    }
    results.append(card);
  });
}

async function classify() {
  const texts = input.value.split("\\n").map(t => t.trim()).filter(t => t.length > 0);
  if (texts.length === 0) { status.textContent = "type or paste a text first"; status.className = "error"; return; }
  button.disabled = true;
  status.className = "hint";
  status.textContent = "classifying " + texts.length + (texts.length === 1 ? " text…" : " texts…");
  const started = performance.now();
  try {
    const response = await fetch("/v1/classify", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({texts}),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    show(texts, answer);
    status.textContent = texts.length + (texts.length === 1 ? " text" : " texts") + " in " +
      Math.round(performance.now() - started) + " ms";
  } catch (err) {
    status.textContent = String(err.message || err);
    status.className = "error";
  } finally {
    button.disabled = false;
  }
}

button.addEventListener("click", classify);
input.addEventListener("keydown", e => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classify(); });
</script>
</body>
</html>
"""
