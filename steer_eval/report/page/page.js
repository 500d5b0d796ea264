"use strict";
// The interactive views of the results page: order heatmap, sample browser, one prompt side by side.
// Every text from the records is set through textContent (el()), never parsed as HTML.
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const PAGE_SIZE = 20;
  const VIEWS = ["overview", "orders", "samples", "side"];
  const $ = (id) => document.getElementById(id);

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "className") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const percent = (value) => (value === null || value === undefined ? "—" : (100 * value).toFixed(1));
  const number = (value, digits) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
  const settingName = (run, index) => {
    const s = DATA.runs[run].settings[index];
    return `${s.label}, k = ${s.k}`;
  };
  function option(value, text, selected) {
    return el("option", { value, selected: selected ? true : undefined }, text);
  }

  // --- cases: every embedded response to one prompt under one combination -----------------------------------
  const caseId = (combination, prompt) => `${combination}|${prompt}`;
  const cases = new Map();
  for (const sample of DATA.samples) {
    if (sample.kept_as !== "case") continue;
    const id = caseId(sample.combination, sample.prompt_id);
    if (!cases.has(id)) cases.set(id, []);
    cases.get(id).push(sample);
  }
  const caseLink = (combination, prompt) =>
    cases.has(caseId(combination, prompt))
      ? el("a", { href: "#case=" + encodeURIComponent(caseId(combination, prompt)), className: "case-link" },
           "side by side")
      : null;

  // --- views -------------------------------------------------------------------------------------------------
  function show(view) {
    for (const name of VIEWS) $(name).hidden = name !== view;
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.view === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }
  function route() {
    const hash = decodeURIComponent(location.hash.slice(1));
    if (hash.startsWith("case=")) {
      showCase(hash.slice(5));
      show("side");
    } else {
      show(VIEWS.includes(hash) ? hash : "overview");
    }
  }

  // --- order view ----------------------------------------------------------------------------------------------
  function orderSettings(run) {
    return DATA.runs[run].settings.map((s, i) => i).filter((i) => DATA.runs[run].settings[i].k >= 2);
  }
  function fillOrderSettings() {
    const run = Number($("order-run").value);
    const settings = orderSettings(run);
    const first = settings.find((i) => DATA.runs[run].settings[i].control === "steering") ?? settings[0];
    $("order-setting").replaceChildren(...settings.map((i) => option(i, settingName(run, i), i === first)));
  }
  function chips(row, held, failed) {
    return row.orders.map((order, position) => {
      const bit = 1 << position;
      const state = held & bit ? (failed & bit ? "mixed" : "held") : failed & bit ? "failed" : "absent";
      const mark = { held: "✓", failed: "✗", mixed: "~", absent: "·" }[state];
      return el("span", { className: `chip ${state}`, title: `${order}: ${state}` }, mark);
    });
  }
  function orderDetail(row) {
    const run = Number($("order-run").value);
    const orders = el("table", {}, el("tr", {}, el("th", {}, "order"), el("th", {}, "accuracy %")),
      row.orders.map((order, i) => el("tr", {}, el("td", {}, order), el("td", {}, percent(row.accuracy[i])))));
    const flips = el("table", { className: "flips" },
      el("tr", {}, el("th", {}, "prompt"), el("th", {}, "verdict per order"), el("th", {}, "")),
      row.listed.map(([prompt, held, failed]) => el("tr", { className: "flip" },
        el("td", {}, el("span", { className: "label" }, prompt), DATA.prompts[prompt] || ""),
        el("td", {}, chips(row, held, failed)), el("td", {}, caseLink(row.combination, prompt)))));
    $("order-detail").replaceChildren(
      el("h3", {}, `${row.combination} (${settingName(run, row.setting)}, ${row.seen ? "seen" : "unseen"})`),
      el("p", {}, row.complete ? `Δmax ${percent(row.delta)} points over ${row.orders.length} orders.`
        : `Not every order was run on common prompts (${row.incomplete} records outside a complete set); ` +
          "accuracy is over each order's own records and there is no Δmax."),
      orders,
      el("h4", {}, `Prompts whose verdict flips between orders: ${row.flips}` +
        (row.flips > row.listed.length ? ` (${row.listed.length} named, chosen by the seeded hash)` : "")),
      row.listed.length ? flips : el("p", {}, "none"));
  }
  function drawHeatmap() {
    const run = Number($("order-run").value);
    const setting = Number($("order-setting").value);
    const sort = $("order-sort").value;
    const rows = DATA.runs[run].combinations.filter((row) => row.setting === setting);
    const key = { delta: (r) => -(r.delta ?? -1), flips: (r) => -r.flips, name: () => 0 }[sort];
    rows.sort((a, b) => key(a) - key(b) || a.combination.localeCompare(b.combination));
    if (!rows.length) {
      $("order-heatmap").replaceChildren(el("p", {}, "No compositions (k ≥ 2) in this run."));
      $("order-detail").replaceChildren();
      return;
    }
    const width = Math.max(...rows.map((r) => r.orders.length));
    const header = el("tr", {}, el("th", {}, "combination"),
      Array.from({ length: width }, (_, i) => el("th", {}, width === 2 ? ["as listed", "reversed"][i] : `${i + 1}`)),
      el("th", {}, "Δmax"), el("th", {}, "flipping prompts"));
    const body = rows.map((row) => el("tr", {
      className: "row", "data-combination": row.combination,
      onclick: (event) => {
        for (const chosen of document.querySelectorAll(".heatmap tr.chosen")) chosen.classList.remove("chosen");
        event.currentTarget.classList.add("chosen");
        orderDetail(row);
      },
    }, el("td", {}, row.combination + (row.seen ? "" : " (unseen)")),
      row.accuracy.map((value, i) => el("td", {
        className: "cell", title: `${row.orders[i]}: ${percent(value)}%`,
        style: value === null ? "" : `background: hsl(${Math.round(120 * value)}, 65%, 80%)`,
      }, percent(value))),
      el("td", {}, percent(row.delta)), el("td", {}, row.flips)));
    $("order-heatmap").replaceChildren(el("table", { className: "heatmap" }, header, body));
    orderDetail(rows[0]);
    document.querySelector(".heatmap tr.row").classList.add("chosen");
  }
  function initOrders() {
    const runs = DATA.runs.map((run, i) => i).filter((i) => orderSettings(i).length);
    if (!runs.length) {
      $("order-heatmap").replaceChildren(el("p", {}, "No compositions (k ≥ 2) in these runs."));
      return;
    }
    $("order-run").replaceChildren(...runs.map((i) => option(i, DATA.runs[i].name)));
    fillOrderSettings();
    $("order-run").addEventListener("change", () => { fillOrderSettings(); drawHeatmap(); });
    $("order-setting").addEventListener("change", drawHeatmap);
    $("order-sort").addEventListener("change", drawHeatmap);
    drawHeatmap();
  }

  // --- one sample ----------------------------------------------------------------------------------------------
  function badges(sample, behaviors) {
    return behaviors.map((behavior) => {
      const holds = sample.per_behavior[behavior];
      const reason = sample.reasons ? sample.reasons[behavior] : null;
      const today = sample.today && sample.today[behavior] !== holds
        ? el("span", { className: "today" }, ` (today's verifiers: ${sample.today[behavior] ? "holds" : "fails"})`)
        : null;
      return el("span", { className: `badge ${holds ? "holds" : "fails"}`, "data-behavior": behavior },
        `${holds ? "✓" : "✗"} ${behavior}`, reason ? `: ${reason}` : "", today);
    });
  }
  function modelInput(sample) {
    const parts = [];
    if (sample.steering.length) parts.push(`steering tokens ${sample.steering.map((t) => `<${t.replace(/^<|>$/g, "")}>`).join(" ")}`);
    if (sample.instruction) parts.push(`instruction “${sample.instruction}”`);
    return `the prompt${parts.length ? " with " + parts.join(" and ") : " alone"} (${sample.control}` +
      `${sample.mode === "-" ? "" : ", " + sample.mode})`;
  }
  function qualityLine(sample) {
    const q = sample.quality || {};
    const parts = [];
    if (q.repetition !== undefined) parts.push(`repetition ${number(q.repetition, 2)}`);
    if (q.distinct_2 !== undefined) parts.push(`distinct-2 ${number(q.distinct_2, 2)}`);
    if (q.hit_limit !== undefined && q.hit_limit !== null) parts.push(q.hit_limit ? "stopped at the token limit" : "ended on its own");
    if (q.fluency !== undefined && q.fluency !== null) parts.push(`fluency ${number(q.fluency, 2)}`);
    if (sample.judge) parts.push(`judge: relevance ${sample.judge.relevance}, fluency ${sample.judge.fluency}, combined ${number(sample.judge.combined, 2)}`);
    return parts.join(" · ");
  }
  function sampleCard(sample) {
    const run = DATA.runs[sample.run].name;
    return el("article", { className: "sample", "data-key": sample.key },
      el("div", { className: "meta" }, [DATA.runs.length > 1 ? run : null, sample.control,
        sample.mode === "-" ? null : sample.mode, `k = ${sample.k}`, `order ${sample.order}`,
        `kept as ${sample.kept_as}`].filter(Boolean).join(" · ")),
      el("div", { className: "badges" }, badges(sample, sample.behaviors)),
      el("div", {}, el("span", { className: "label" }, "prompt"), DATA.prompts[sample.prompt_id] || sample.prompt_id),
      el("div", { className: "meta" }, el("span", { className: "label" }, "model input"), modelInput(sample)),
      el("div", { className: "response" }, sample.response),
      el("div", { className: "quality" }, qualityLine(sample), " ", caseLink(sample.combination, sample.prompt_id)));
  }

  // --- sample browser ------------------------------------------------------------------------------------------
  const distinct = (values) => [...new Set(values)].sort((a, b) => (a > b) - (a < b));
  const hasJudge = DATA.samples.some((s) => s.judge);
  const hasFluency = DATA.samples.some((s) => s.quality && s.quality.fluency !== undefined && s.quality.fluency !== null);
  let page = 0;

  function select(name, label, choices) {
    return el("label", {}, label + " ", el("select", { name },
      option("", "any", true), choices.map(([value, text]) => option(value, text))));
  }
  function initFilters() {
    const samples = DATA.samples;
    const form = $("filters");
    const fields = [
      DATA.runs.length > 1 ? select("run", "run", DATA.runs.map((r, i) => [i, r.name])) : null,
      select("behavior", "behaviour", DATA.behaviors.map((b) => [b, b])),
      select("verdict", "verdict", [["holds", "holds"], ["fails", "fails"]]),
      select("k", "k", distinct(samples.map((s) => s.k)).map((k) => [k, k])),
      select("control", "control method", distinct(samples.map((s) => s.control)).map((c) => [c, c])),
      select("mode", "mode", distinct(samples.map((s) => s.mode)).filter((m) => m !== "-").map((m) => [m, m])),
      select("order", "order", distinct(samples.map((s) => s.order)).map((o) => [o, o])),
      select("quality", "quality", [["repetitive", "repetition ≥ 0.5"], ["limit", "stopped at the token limit"],
        ["ended", "ended on its own"]]),
      select("kept", "kept as", [["case", "case"], ["failure", "failure"]]),
      hasJudge ? el("label", {}, "judge combined ≥ ", el("input", { name: "judge", type: "number", step: "0.1", size: 4 })) : null,
      hasFluency ? el("label", {}, "fluency ≥ ", el("input", { name: "fluency", type: "number", step: "0.1", size: 4 })) : null,
      el("label", {}, "text ", el("input", { name: "text", type: "search", placeholder: "in prompt or response" })),
    ];
    form.replaceChildren(...fields.filter(Boolean));
    form.addEventListener("input", () => { page = 0; drawSamples(); });
    form.addEventListener("change", () => { page = 0; drawSamples(); });
    form.addEventListener("submit", (event) => event.preventDefault());
  }
  function matches(sample, f) {
    if (f.run !== "" && f.run !== undefined && sample.run !== Number(f.run)) return false;
    if (f.behavior && !sample.behaviors.includes(f.behavior)) return false;
    if (f.verdict) {
      const held = f.behavior ? sample.per_behavior[f.behavior] : sample.followed;
      if (held !== (f.verdict === "holds")) return false;
    }
    if (f.k && sample.k !== Number(f.k)) return false;
    if (f.control && sample.control !== f.control) return false;
    if (f.mode && sample.mode !== f.mode) return false;
    if (f.order && sample.order !== f.order) return false;
    if (f.kept && sample.kept_as !== f.kept) return false;
    const q = sample.quality || {};
    if (f.quality === "repetitive" && !(q.repetition >= 0.5)) return false;
    if (f.quality === "limit" && q.hit_limit !== true) return false;
    if (f.quality === "ended" && q.hit_limit !== false) return false;
    if (f.judge && !(sample.judge && sample.judge.combined >= Number(f.judge))) return false;
    if (f.fluency && !(q.fluency >= Number(f.fluency))) return false;
    if (f.text) {
      const needle = f.text.toLowerCase();
      const haystack = `${DATA.prompts[sample.prompt_id] || ""}\n${sample.response}\n${sample.instruction || ""}`;
      if (!haystack.toLowerCase().includes(needle)) return false;
    }
    return true;
  }
  function drawSamples() {
    const filters = Object.fromEntries(new FormData($("filters")).entries());
    const found = DATA.samples.filter((sample) => matches(sample, filters));
    const pages = Math.max(1, Math.ceil(found.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    $("sample-count").textContent = `${found.length} of ${DATA.samples.length} embedded samples match` +
      (found.length ? `; page ${page + 1} of ${pages}` : "");
    $("sample-list").replaceChildren(...found.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).map(sampleCard));
    const turn = (step) => () => { page += step; drawSamples(); };
    $("sample-pager").replaceChildren(
      el("button", { type: "button", name: "previous", disabled: page === 0 ? true : undefined, onclick: turn(-1) }, "← previous"),
      el("button", { type: "button", name: "next", disabled: page >= pages - 1 ? true : undefined, onclick: turn(1) }, "next →"));
  }

  // --- one prompt, side by side --------------------------------------------------------------------------------
  function initCases() {
    const ids = [...cases.keys()].sort();
    $("case-select").replaceChildren(...ids.map((id) => {
      const [combination, prompt] = [id.slice(0, id.indexOf("|")), id.slice(id.indexOf("|") + 1)];
      const text = DATA.prompts[prompt] || "";
      return option(id, `${combination} — ${prompt}: ${text.length > 70 ? text.slice(0, 70) + "…" : text}`);
    }));
    $("case-select").addEventListener("change", () => { location.hash = "case=" + encodeURIComponent($("case-select").value); });
    if (ids.length) showCase(ids[0]);
    else $("case-view").replaceChildren(el("p", {}, "No case is embedded."));
  }
  function showCase(id) {
    const samples = cases.get(id);
    if (!samples) {
      $("case-view").replaceChildren(el("p", { className: "warning" }, "This case is not embedded in the page."));
      return;
    }
    $("case-select").value = id;
    const combination = samples[0].combination;
    const behaviors = combination.split("+");
    const columnOf = (s) => `${s.run}|${s.control}|${s.mode}`;
    const columns = distinct(samples.map(columnOf));
    const orders = distinct(samples.map((s) => s.order));
    const cell = new Map(samples.map((s) => [`${s.order}|${columnOf(s)}`, s]));
    const title = (column) => {
      const [run, control, mode] = column.split("|");
      return [DATA.runs.length > 1 ? DATA.runs[Number(run)].name : null, control, mode === "-" ? null : mode]
        .filter(Boolean).join(" · ");
    };
    $("case-view").replaceChildren(
      el("p", {}, el("span", { className: "label" }, samples[0].prompt_id), DATA.prompts[samples[0].prompt_id] || ""),
      el("table", { className: "side" },
        el("tr", {}, el("th", {}, "order"), columns.map((c) => el("th", {}, title(c)))),
        orders.map((order) => el("tr", { className: "order-row", "data-order": order }, el("th", {}, order),
          columns.map((column) => {
            const sample = cell.get(`${order}|${column}`);
            return el("td", {}, sample ? [el("div", { className: "badges" }, badges(sample, behaviors)),
              el("div", { className: "response" }, sample.response), el("div", { className: "quality" }, qualityLine(sample))]
              : "not run");
          })))));
  }

  initOrders();
  initFilters();
  drawSamples();
  initCases();
  window.addEventListener("hashchange", route);
  route();
})();
