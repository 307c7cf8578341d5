// The statewise playground: a page over the server's own OpenAI-compatible API.
// Plain browser JavaScript, no build step, no requests beyond this server's origin.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  let mode = "completion"; // or "chat"
  let controller = null; // the AbortController of the request in flight
  let history = []; // the chat so far: [{role, content}]

  // ------------------------------------------------------------------ helpers
  // The status line; data-state is idle, streaming, done, stopped or error, and
  // data-finished counts the requests that ended (done, stopped or error).
  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
    if (state !== "streaming") status.dataset.finished = String(Number(status.dataset.finished) + 1);
  }

  function formatBytes(n) {
    if (!Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  }

  // The stop field: comma-separated strings; "\n", "\t", "\," and "\\" are escapes.
  function parseStops(text) {
    const out = [];
    let current = "";
    for (let i = 0; i < text.length; i += 1) {
      const c = text[i];
      if (c === "\\" && i + 1 < text.length) {
        const next = text[i + 1];
        current += { n: "\n", t: "\t", ",": ",", "\\": "\\" }[next] ?? c + next;
        i += 1;
      } else if (c === ",") {
        out.push(current);
        current = "";
      } else {
        current += c;
      }
    }
    out.push(current);
    return out.filter((s) => s.length > 0);
  }

  // A number field's value, or undefined when empty (the server's default then applies).
  // What the server accepts is the server's business: it answers a bad value with a 400.
  function numberField(id) {
    const raw = $(id).value.trim();
    return raw === "" ? undefined : Number(raw);
  }

  function sampling() {
    const body = {
      max_tokens: numberField("max_tokens"),
      temperature: numberField("temperature"),
      top_p: numberField("top_p"),
      top_k: numberField("top_k"),
      seed: numberField("seed"),
    };
    const stops = parseStops($("stop-strings").value);
    if (stops.length) body.stop = stops;
    for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
    return body;
  }

  // The server-sent events of a streamed response, as parsed JSON; stops at [DONE].
  // A fast stream keeps reader.read() resolving at once, and awaiting a resolved promise
  // never lets the browser run its other tasks: every 50 ms the loop waits for one, so
  // clicks (Stop) and painting go through however fast the tokens come.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let yielded = performance.now();
    for (;;) {
      if (performance.now() - yielded > 50) {
        await new Promise((resolve) => setTimeout(resolve, 0));
        yielded = performance.now();
      }
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.error?.message ?? JSON.stringify(body);
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  // ------------------------------------------------------------------ server panel
  async function refreshModel() {
    try {
      const response = await fetch("/v1/models");
      const body = await response.json();
      $("model-id").textContent = body.data.map((m) => m.id).join(", ");
    } catch (err) {
      $("model-id").textContent = `unavailable (${err.message})`;
    }
  }

  function parseMetrics(text) {
    const values = {};
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const cut = line.lastIndexOf(" ");
      values[line.slice(0, cut)] = Number(line.slice(cut + 1));
    }
    return values;
  }

  async function refreshMetrics() {
    let m;
    try {
      const response = await fetch("/metrics");
      m = parseMetrics(await response.text());
    } catch {
      return;
    }
    const show = (id, value) => {
      $(id).textContent = value === undefined || Number.isNaN(value) ? "–" : String(value);
    };
    $("state-size").textContent = formatBytes(m.statewise_slot_state_bytes);
    show("slots", `${m.statewise_requests_running} / ${m.statewise_batch_slots}`);
    show("cache-hits", m.statewise_cache_hits_total);
    show("cache-misses", m.statewise_cache_misses_total);
    $("cache-size").textContent = formatBytes(m.statewise_cache_bytes);
    show("generated", m.statewise_generated_tokens_total);
  }

  // ------------------------------------------------------------------ modes
  function setMode(next) {
    if (controller) return; // not while a request runs
    mode = next;
    $("completion-pane").hidden = mode !== "completion";
    $("chat-pane").hidden = mode !== "chat";
    $("mode-completion").setAttribute("aria-selected", String(mode === "completion"));
    $("mode-chat").setAttribute("aria-selected", String(mode === "chat"));
    (mode === "chat" ? $("chat-input") : $("prompt")).focus();
  }

  function addMessage(role, content) {
    const box = document.createElement("div");
    box.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "role";
    who.textContent = role;
    const text = document.createElement("div");
    text.className = "content";
    text.textContent = content;
    box.append(who, text);
    $("chat-log").append(box);
    return text;
  }

  // ------------------------------------------------------------------ send / stop
  async function send() {
    if (controller) return;
    let path;
    let body;
    let sink; // the element the reply streams into
    let pendingUser = null;
    if (mode === "completion") {
      const prompt = $("prompt").value;
      if (!prompt) {
        setStatus("error", "the prompt is empty");
        return;
      }
      path = "/v1/completions";
      body = { prompt };
      sink = $("output");
      sink.textContent = "";
    } else {
      const text = $("chat-input").value;
      if (!text) {
        setStatus("error", "the message is empty");
        return;
      }
      const system = $("system").value;
      pendingUser = { role: "user", content: text };
      const messages = [...history, pendingUser];
      if (system) messages.unshift({ role: "system", content: system });
      path = "/v1/chat/completions";
      body = { messages };
    }
    Object.assign(body, sampling(), { stream: true, stream_options: { include_usage: true } });

    controller = new AbortController();
    $("send").disabled = true;
    $("stop").disabled = false;
    setStatus("streaming", "streaming…");
    const started = performance.now();
    let firstAt = null;
    let finish = null;
    let usage = null;
    let reply = "";
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) {
        setStatus("error", `error ${response.status}: ${await errorText(response)}`);
        return;
      }
      if (pendingUser) {
        addMessage("user", pendingUser.content);
        $("chat-input").value = "";
        sink = addMessage("assistant", "");
      }
      for await (const event of events(response)) {
        if (event.error) throw new Error(event.error.message ?? "the server sent an error");
        if (event.usage) usage = event.usage;
        const choice = event.choices?.[0];
        if (!choice) continue;
        const piece = mode === "chat" ? choice.delta?.content : choice.text;
        if (piece) {
          if (firstAt === null) firstAt = performance.now();
          reply += piece;
          sink.append(piece);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      const seconds = (performance.now() - started) / 1000;
      const parts = [`done: ${finish ?? "?"}`];
      if (usage) parts.push(`${usage.completion_tokens} tokens`);
      if (firstAt !== null) parts.push(`first token ${((firstAt - started) / 1000).toFixed(2)} s`);
      if (usage && seconds > 0) parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tokens/s`);
      await refreshMetrics();
      setStatus("done", parts.join(" · "));
    } catch (err) {
      if (err.name === "AbortError") {
        setStatus("stopped", `stopped after ${reply.length} characters`);
      } else {
        setStatus("error", `error: ${err.message}`);
      }
    } finally {
      if (pendingUser && sink) history.push(pendingUser, { role: "assistant", content: reply });
      controller = null;
      $("send").disabled = false;
      $("stop").disabled = true;
      refreshMetrics();
    }
  }

  function stop() {
    if (controller) controller.abort();
    // the server frees the slot at its next tick: show it once it has
    for (const ms of [250, 500, 1000, 2000, 4000]) setTimeout(refreshMetrics, ms);
  }

  // ------------------------------------------------------------------ wiring
  $("mode-completion").addEventListener("click", () => setMode("completion"));
  $("mode-chat").addEventListener("click", () => setMode("chat"));
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", stop);
  $("refresh").addEventListener("click", refreshMetrics);
  $("append").addEventListener("click", () => {
    $("prompt").value += $("output").textContent;
    $("output").textContent = "";
  });
  $("new-chat").addEventListener("click", () => {
    if (controller) return;
    history = [];
    $("chat-log").textContent = "";
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send();
    } else if (event.key === "Escape") {
      stop();
    }
  });

  refreshModel();
  refreshMetrics();
})();
