// The staff page: live updates over server-sent events, buttons without a reload, a beep on new orders.
// Plain JavaScript, no library, nothing fetched from elsewhere. Pages work without it (forms post and redirect).
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const csrf = body.dataset.csrf;
  let lastId = parseInt(body.dataset.last || "0", 10);
  let audio = null;
  const linkEl = document.getElementById("link");
  const calls = new Map();

  function setLink(text, ok) {
    if (!linkEl) return;
    linkEl.textContent = text;
    linkEl.className = "link " + (ok ? "ok" : "down");
  }

  // -- sound: browsers allow audio only after a user gesture, hence the button ---------------
  const soundBtn = document.getElementById("sound");
  if (soundBtn) {
    soundBtn.addEventListener("click", function () {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      audio.resume();
      soundBtn.textContent = "Sound on";
      soundBtn.disabled = true;
      beep();
    });
  }
  function beep() {
    if (!audio) return;
    const t = audio.currentTime;
    [0, 0.25].forEach(function (offset) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, t + offset);
      gain.gain.exponentialRampToValueAtTime(0.4, t + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + offset + 0.2);
      osc.connect(gain).connect(audio.destination);
      osc.start(t + offset);
      osc.stop(t + offset + 0.22);
    });
  }

  // -- forms post in the background; the event stream brings the change -----------------------
  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (!form.classList.contains("js-post")) return;
    ev.preventDefault();
    fetch(form.action, {method: "POST", body: new FormData(form), credentials: "same-origin",
                        headers: {"Accept": "application/json", "X-CSRF-Token": csrf}})
      .then(function (r) {
        if (r.status === 401) { window.location = "/staff/login"; return; }
        if (!r.ok) return r.text().then(function (t) { alert(t); });
      })
      .catch(function () { setLink("offline", false); });
  });

  // -- orders ------------------------------------------------------------------------------
  function showOrder(data) {
    const board = document.getElementById("board");
    if (!board) return;
    const old = document.getElementById("order-" + data.id);
    if (!data.html) { if (old) old.remove(); return; }
    const holder = document.createElement("div");
    holder.innerHTML = data.html.trim();  // server-rendered and escaped by the template
    const card = holder.firstElementChild;
    const finished = ["completed", "cancelled"].indexOf(card.dataset.status) >= 0;
    const target = finished ? document.getElementById("finished") : board;
    if (old) old.remove();
    if (finished) target.prepend(card); else insertInOrder(target, card);
    if (data.action === "committed" && !old) {
      card.classList.add("fresh");
      setTimeout(function () { card.classList.remove("fresh"); }, 8000);
      beep();
    }
    const empty = document.getElementById("empty");
    if (empty) empty.hidden = board.children.length > 0;
  }
  function insertInOrder(target, card) {
    const id = parseInt(card.dataset.id, 10);
    for (const other of target.children) {
      if (parseInt(other.dataset.id, 10) > id) { target.insertBefore(card, other); return; }
    }
    target.appendChild(card);
  }

  // -- live calls ------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function postButton(label, action, cls) {
    const form = el("form", "js-post");
    form.method = "post";
    form.action = action;
    const token = el("input");
    token.type = "hidden"; token.name = "csrf"; token.value = csrf;
    const btn = el("button", cls, label);
    btn.type = "submit";
    form.append(token, btn);
    return form;
  }
  function callCard(sid, started) {
    let c = calls.get(sid);
    if (c) return c;
    const root = el("article", "call");
    root.id = "call-" + sid;
    const head = el("header");
    const state = el("span", "badge", "greeting");
    const clock = el("span", "clock", "0:00");
    head.append(el("h2", "", "Call"), state, clock);
    const cart = el("ul", "items cart");
    const total = el("p", "total");
    const lines = el("ol", "transcript");
    const actions = el("div", "actions");
    actions.append(postButton("Take over", "/staff/calls/" + sid + "/takeover", "primary"),
                   postButton("End call", "/staff/calls/" + sid + "/end", "danger"));
    root.append(head, cart, total, lines, actions);
    const holder = document.getElementById("live");
    if (holder) { holder.append(root); holder.hidden = false; }
    c = {root: root, state: state, clock: clock, cart: cart, total: total, lines: lines,
         started: started || Date.now()};
    calls.set(sid, c);
    const none = document.getElementById("nolive");
    if (none) none.hidden = true;
    return c;
  }
  function showCart(c, cart) {
    if (!cart) return;
    c.cart.replaceChildren();
    (cart.lines || []).forEach(function (l) {
      const tops = l.toppings && l.toppings.length ? " + " + l.toppings.join(", ") : "";
      c.cart.append(el("li", "", l.quantity + "× " + (l.size ? l.size + " " : "") + l.item + tops));
    });
    const who = [cart.customer, cart.fulfillment].filter(Boolean).join(", ");
    c.total.textContent = (who ? who + " · " : "") + "so far $" + ((cart.total_cents || 0) / 100).toFixed(2);
  }
  function dropCall(sid) {
    const c = calls.get(sid);
    if (!c) return;
    c.root.remove();
    calls.delete(sid);
    const holder = document.getElementById("live");
    if (holder && page === "board" && !holder.children.length) holder.hidden = true;
    const none = document.getElementById("nolive");
    if (none && !calls.size) none.hidden = false;
  }
  function onCall(m) {
    if (m.kind === "ended") {
      const c = calls.get(m.sid);
      if (c) {
        c.state.textContent = "ended: " + (m.outcome || "");
        c.root.classList.add("ended");
        c.ended = true;
        c.root.querySelectorAll("form").forEach(function (f) { f.remove(); });
        setTimeout(function () { dropCall(m.sid); }, 3000);
      }
      return;
    }
    const c = callCard(m.sid);
    if (m.kind === "state") c.state.textContent = m.state;
    if (m.kind === "transcript") {
      const li = el("li", "role-" + m.role);
      li.append(el("b", "", m.role === "caller" ? "Caller" : "AI"), document.createTextNode(" " + m.text));
      c.lines.append(li);
      c.lines.scrollTop = c.lines.scrollHeight;  // follow the words, without moving the page
    }
    if (m.cart) showCart(c, m.cart);
  }
  setInterval(function () {
    calls.forEach(function (c) {
      if (c.ended) return;
      const s = Math.max(0, Math.floor((Date.now() - c.started) / 1000));
      c.clock.textContent = Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
    });
  }, 1000);

  // -- the stream: reconnects on its own (Last-Event-ID), or anew after an error --------------
  let source = null;
  function connect() {
    if (page === "menu" || page === "log" || page === "call" || page === "other") {  // pages without live parts
      if (linkEl) linkEl.hidden = true;
      return;
    }
    const business = body.dataset.business;  // an operator's choice: only that business's events
    source = new EventSource("/staff/events?after=" + lastId + (business ? "&business=" + encodeURIComponent(business) : ""));
    source.onopen = function () { setLink("live", true); };
    source.onerror = function () {
      setLink("reconnecting…", false);
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(connect, 2000);
      }
    };
    source.addEventListener("order", function (e) {
      lastId = Math.max(lastId, parseInt(e.lastEventId, 10) || lastId);
      showOrder(JSON.parse(e.data));
    });
    source.addEventListener("log", function (e) {
      lastId = Math.max(lastId, parseInt(e.lastEventId, 10) || lastId);
    });
    source.addEventListener("calls", function (e) {
      const live = JSON.parse(e.data).calls;
      const seen = new Set(live.map(function (c) { return c.sid; }));
      calls.forEach(function (c, sid) { if (!seen.has(sid)) dropCall(sid); });
      live.forEach(function (l) {
        const c = callCard(l.sid, l.started_ms);
        c.state.textContent = l.state;
        showCart(c, l.cart);
      });
    });
    source.addEventListener("call", function (e) { onCall(JSON.parse(e.data)); });
  }
  connect();
})();
