/*
 * dispycos monitor pages: plain JavaScript, no libraries.
 *
 * Every page fetches its whole state from a JSON resource (cluster_status,
 * node_info, server_info), re-fetches when the server-sent event stream
 * (events) announces a change, and every poll interval in any case.
 */
(function () {
  "use strict";

  // -- helpers --------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "className") node.className = attrs[k];
        else if (k.slice(0, 5) === "data-") node.setAttribute(k, attrs[k]);
        else node[k] = attrs[k];
      });
    }
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function td(text, className) {
    return el("td", { text: text === undefined || text === null ? "" : String(text), className: className || "" });
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function fmtPct(x) {
    if (x === null || x === undefined) return "-";
    return x.toFixed(1) + " %";
  }

  function fmtTime(t) {
    if (!t) return "-";
    var d = new Date(t * 1000);
    return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString();
  }

  function fmtDuration(sec) {
    if (sec === null || sec === undefined || sec < 0) return "-";
    sec = Math.floor(sec);
    var h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function query(name) {
    return new URLSearchParams(window.location.search).get(name);
  }

  function message(text, isError) {
    var list = $("messages");
    if (!list) return;
    var item = el("li", { text: new Date().toLocaleTimeString() + ": " + text, className: isError ? "error" : "" });
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 8) list.removeChild(list.lastChild);
  }

  function getJSON(url) {
    return fetch(url, { cache: "no-store", credentials: "same-origin" }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) {
          var err = new Error(body.error || ("HTTP " + r.status));
          err.status = r.status;
          throw err;
        }
        return body;
      });
    });
  }

  function postForm(url, fields) {
    var body = new URLSearchParams();
    fields.forEach(function (kv) { body.append(kv[0], kv[1]); });
    return fetch(url, { method: "POST", body: body, credentials: "same-origin" }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
        return data;
      });
    });
  }

  // IPv4 addresses sort numerically; anything else by its text.
  function addrKey(addr) {
    var m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(addr || "");
    if (!m) return "1" + (addr || "");
    return "0" + m.slice(1).map(function (p) { return ("00" + p).slice(-3); }).join(".");
  }

  function compare(a, b) {
    var an = a === null || a === undefined, bn = b === null || b === undefined;
    if (an || bn) return an === bn ? 0 : (an ? 1 : -1);
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b));
  }

  // -- charts -----------------------------------------------------------------

  // history: [[time, cpu available %, memory available bytes], ...]; drawn
  // are CPU in use (100 - available, on a 0-100 scale, filled) and memory
  // available (scaled to its largest value in the window).
  function drawChart(canvas, history, windowSec) {
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, pad = 2;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#d5dbe1";
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
    if (!history || !history.length) return;
    // the time axis spans the samples there are (at least 10 s), at most the window
    var now = history[history.length - 1][0];
    var t0 = Math.max(now - (windowSec || 600), Math.min(history[0][0], now - 10));
    var memMax = 0;
    history.forEach(function (p) { if (p[2] > memMax) memMax = p[2]; });
    var styles = getComputedStyle(document.documentElement);
    function line(value, scale, color, fill) {
      var points = [];
      history.forEach(function (p) {
        var v = value(p);
        if (v === null || v === undefined || isNaN(v) || p[0] < t0) return;
        points.push([pad + (w - 2 * pad) * (p[0] - t0) / (now - t0 || 1),
                     h - pad - (h - 2 * pad) * Math.max(0, Math.min(1, v / scale))]);
      });
      if (!points.length) return;
      ctx.beginPath();
      points.forEach(function (pt, i) { if (i) ctx.lineTo(pt[0], pt[1]); else ctx.moveTo(pt[0], pt[1]); });
      ctx.strokeStyle = color;
      ctx.lineWidth = h > 60 ? 2 : 1.5;
      ctx.stroke();
      if (fill) {
        ctx.lineTo(points[points.length - 1][0], h - pad);
        ctx.lineTo(points[0][0], h - pad);
        ctx.closePath();
        ctx.globalAlpha = 0.18;
        ctx.fillStyle = color;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    }
    line(function (p) { return p[1] === null ? null : 100 - p[1]; }, 100,
         styles.getPropertyValue("--cpu").trim() || "#1f6fb2", true);
    if (memMax > 0) line(function (p) { return p[2]; }, memMax, styles.getPropertyValue("--mem").trim() || "#2e9a4b");
    if (h > 60) {
      ctx.fillStyle = "#5f6b76";
      ctx.font = "11px sans-serif";
      ctx.fillText("100%", 4, 12);
      var span = now - t0;
      ctx.fillText("last " + (span >= 90 ? Math.round(span / 60) + " min" : Math.round(span) + " s"), 4, h - 4);
      if (memMax > 0) ctx.fillText("max " + fmtBytes(memMax), w - 90, 12);
    }
  }

  // -- live updates -------------------------------------------------------------

  // Calls refresh() now, after events and every poll interval; keeps the
  // settings inputs in step with the server. relevance(event data) gives
  // how soon (ms) to refresh after that event, or null to ignore it.
  function Live(refresh, relevance) {
    var self = this;
    this.refresh = refresh;
    this.relevance = relevance || function () { return 300; };
    this.due = null;
    this.pollSec = null;
    this.timer = null;
    this.pending = null;
    this.busy = false;
    this.again = false;
    this.onSettings = null;
    // Settings fields the user changed and has not applied yet: updates
    // (events, polls) do not overwrite them.
    this.edited = {};
    this.closed = false;
    if (window.EventSource) {
      var source = new EventSource("events");
      this.source = source;
      source.addEventListener("hello", function (e) {
        setLive(true);
        self.settings(JSON.parse(e.data));
        self.soon();
      });
      source.addEventListener("message", function (e) {
        var delay = self.relevance(JSON.parse(e.data));
        if (delay !== null && delay !== undefined) self.soon(delay);
      });
      source.addEventListener("settings", function (e) { self.settings(JSON.parse(e.data)); self.soon(); });
      source.addEventListener("shutdown", function () {
        setLive(false, "monitor stopped");
        source.close();
        self.soon();
      });
      source.onerror = function () { setLive(false, "reconnecting"); };
      window.addEventListener("pagehide", function () { source.close(); });
    }
    this.now();
  }

  Live.prototype.now = function () {
    var self = this;
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    Promise.resolve().then(this.refresh).catch(function (err) {
      message("Could not get status: " + err.message, true);
    }).then(function () {
      self.busy = false;
      if (self.again) { self.again = false; self.soon(); }
      self.arm();
    });
  };

  Live.prototype.soon = function (delay) {
    var self = this;
    delay = delay === undefined ? 300 : delay;
    var due = Date.now() + delay;
    if (this.pending) {
      if (this.due <= due) return;  // an earlier refresh is already planned
      clearTimeout(this.pending);
    }
    this.due = due;
    this.pending = setTimeout(function () { self.pending = null; self.now(); }, delay);
  };

  Live.prototype.arm = function () {
    var self = this;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.pollSec > 0) this.timer = setTimeout(function () { self.now(); }, this.pollSec * 1000);
  };

  Live.prototype.settings = function (s) {
    if (s.poll_sec !== undefined && s.poll_sec !== this.pollSec) {
      this.pollSec = s.poll_sec;
      this.arm();
    }
    var poll = $("poll-sec"), show = $("show-args");
    if (poll && document.activeElement !== poll && !this.edited["poll-sec"] && s.poll_sec !== undefined) {
      poll.value = s.poll_sec;
    }
    if (show && !this.edited["show-args"] && s.show_task_args !== undefined) show.checked = !!s.show_task_args;
    if (this.onSettings) this.onSettings(s);
  };

  function setLive(on, text) {
    var live = $("live");
    if (!live) return;
    live.className = "live " + (on ? "on" : "off");
    live.textContent = on ? "live" : (text || "offline");
  }

  function setupSettings(live) {
    var button = $("apply-settings");
    if (!button) return;
    [["poll-sec", "input"], ["show-args", "change"]].forEach(function (field) {
      var el = $(field[0]);
      if (el) el.addEventListener(field[1], function () { live.edited[field[0]] = true; });
    });
    button.addEventListener("click", function () {
      postForm("update", [["poll_sec", $("poll-sec").value || "0"],
                          ["show_task_args", $("show-args").checked ? "true" : "false"]])
        .then(function (s) { live.edited = {}; live.settings(s); message("Settings updated"); live.now(); })
        .catch(function (err) { message("Could not update settings: " + err.message, true); });
    });
  }

  function showClosed(computation) {
    var banner = $("closed-banner");
    if (banner) banner.classList.toggle("hidden", computation !== "Closed");
  }

  function checkedValues(tbody) {
    return Array.prototype.slice.call(tbody.querySelectorAll("input[type=checkbox]:checked"))
      .map(function (c) { return c.value; });
  }

  function bindSelectAll(box, tbody, selected) {
    box.addEventListener("change", function () {
      Array.prototype.forEach.call(tbody.querySelectorAll("input[type=checkbox]"), function (c) {
        c.checked = box.checked;
        if (box.checked) selected.add(c.value); else selected.delete(c.value);
      });
    });
  }

  function selectBox(value, selected) {
    var box = el("input", { type: "checkbox", value: value, checked: selected.has(value) });
    box.addEventListener("change", function () {
      if (box.checked) selected.add(value); else selected.delete(value);
    });
    return el("td", null, [box]);
  }

  function control(action, field, values, what) {
    if (!values.length) { message("Select " + what + " first", true); return Promise.resolve(); }
    return postForm(action, values.map(function (v) { return [field, v]; })).then(function (r) {
      if (r.done && r.done.length) message(action.replace("_", " ") + ": " + r.done.join(", "));
      Object.keys(r.failed || {}).forEach(function (k) { message(action + " " + k + " failed: " + r.failed[k], true); });
    }).catch(function (err) { message(action + " failed: " + err.message, true); });
  }

  function rememberLinks() {
    var node = sessionStorage.getItem("dispycos-node"), server = sessionStorage.getItem("dispycos-server");
    if (node && $("nav-node")) $("nav-node").href = "node.html?host=" + encodeURIComponent(node);
    if (server && $("nav-server")) $("nav-server").href = "server.html?location=" + encodeURIComponent(server);
  }

  // -- Cluster page -------------------------------------------------------------

  function clusterPage() {
    var tbody = document.querySelector("#nodes tbody");
    var selected = new Set();
    var sortKey = "addr", sortDir = 1;
    var last = null;

    function sortValue(n, key) {
      switch (key) {
        case "addr": return addrKey(n.addr);
        case "cpu": case "memory": case "swap": case "disk": return n.avail ? n.avail[key] : null;
        default: return n[key];
      }
    }

    function render(data) {
      last = data;
      $("tasks-submitted").textContent = data.tasks_submitted;
      $("tasks-running").textContent = data.tasks_running;
      $("tasks-done").textContent = data.tasks_done;
      $("node-count").textContent = data.nodes.length;
      $("computation-status").textContent = data.computation || "-";
      showClosed(data.computation);
      $("no-nodes").classList.toggle("hidden", data.nodes.length > 0);
      var nodes = data.nodes.slice().sort(function (a, b) {
        var c = compare(sortValue(a, sortKey), sortValue(b, sortKey));
        if (c === 0) c = compare(addrKey(a.addr), addrKey(b.addr));
        return sortDir * c;
      });
      document.querySelectorAll("#nodes th.sortable").forEach(function (th) {
        if (th.dataset.key === sortKey) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
        else th.removeAttribute("aria-sort");
      });
      var rows = nodes.map(function (n) {
        var a = n.avail || {};
        var link = el("a", { href: "node.html?host=" + encodeURIComponent(n.addr), text: n.addr });
        var canvas = el("canvas", { className: "spark", width: 140, height: 32 });
        var tr = el("tr", { "data-addr": n.addr, className: /Closed|Disconnected|Abandoned/.test(n.status) ? "closed" : "" }, [
          selectBox(n.addr, selected),
          el("td", { className: "addr" }, [link]),
          td(n.name, "name"),
          td(n.status, "status"),
          td(n.servers, "num servers"),
          td(fmtPct(a.cpu), "num cpu"),
          td(fmtBytes(a.memory), "num memory"),
          td(fmtBytes(a.swap), "num swap"),
          td(fmtBytes(a.disk), "num disk"),
          td(n.tasks_submitted, "num submitted"),
          td(n.tasks_running, "num running"),
          td(n.tasks_done, "num done"),
          td(fmtTime(n.update_time), "update"),
          el("td", null, [canvas])
        ]);
        drawChart(canvas, n.history, 600);
        return tr;
      });
      tbody.replaceChildren.apply(tbody, rows);
      if (nodes.length === 1) sessionStorage.setItem("dispycos-node", nodes[0].addr);
      rememberLinks();
    }

    document.querySelectorAll("#nodes th.sortable").forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.dataset.key;
        if (key === sortKey) sortDir = -sortDir;
        else { sortKey = key; sortDir = key === "addr" || key === "name" || key === "status" ? 1 : -1; }
        if (last) render(last);
      });
    });
    bindSelectAll($("select-all-nodes"), tbody, selected);

    var live = new Live(function () {
      return getJSON("cluster_status").then(function (data) {
        live.settings(data);
        render(data);
      });
    }, function (event) {
      return event.type === "avail" ? 2000 : 300;  // resource reports come every pulse
    });
    setupSettings(live);
    $("suspend-nodes").addEventListener("click", function () {
      control("suspend_node", "host", checkedValues(tbody), "nodes").then(function () { live.now(); });
    });
    $("resume-nodes").addEventListener("click", function () {
      control("resume_node", "host", checkedValues(tbody), "nodes").then(function () { live.now(); });
    });
  }

  // -- Node page ------------------------------------------------------------------

  function nodePage() {
    var host = query("host") || sessionStorage.getItem("dispycos-node") || "";
    var tbody = document.querySelector("#servers tbody");
    var selected = new Set();
    var addr = null;
    $("host").value = host;
    if (host) sessionStorage.setItem("dispycos-node", host);
    rememberLinks();
    $("choose").addEventListener("submit", function (e) {
      e.preventDefault();
      window.location.search = "?host=" + encodeURIComponent($("host").value.trim());
    });

    function render(n) {
      var a = n.avail || {};
      $("node-section").classList.remove("hidden");
      $("node-title").textContent = n.name + " (" + n.addr + ")";
      $("d-name").textContent = n.name;
      $("d-addr").textContent = n.addr;
      $("d-status").textContent = n.status;
      $("d-platform").textContent = n.platform || "-";
      $("d-servers").textContent = n.servers.length + (n.cpus ? " (of " + n.cpus + " CPUs)" : "");
      $("d-cpu").textContent = fmtPct(a.cpu);
      $("d-memory").textContent = fmtBytes(a.memory);
      $("d-swap").textContent = fmtBytes(a.swap);
      $("d-disk").textContent = fmtBytes(a.disk);
      $("d-submitted").textContent = n.tasks_submitted;
      $("d-running").textContent = n.tasks_running;
      $("d-done").textContent = n.tasks_done;
      $("d-update").textContent = fmtTime(n.update_time);
      showClosed(n.computation);
      drawChart($("chart"), n.history, 600);
      $("no-servers").classList.toggle("hidden", n.servers.length > 0);
      var rows = n.servers.map(function (s) {
        var link = el("a", { href: "server.html?location=" + encodeURIComponent(s.location), text: s.location });
        return el("tr", { "data-location": s.location, className: /Closed|Disconnected|Abandoned/.test(s.status) ? "closed" : "" }, [
          selectBox(s.location, selected),
          el("td", { className: "location" }, [link]),
          td(s.status, "status"),
          td(s.tasks_submitted, "num submitted"),
          td(s.tasks_running, "num running"),
          td(s.tasks_done, "num done"),
          td(fmtTime(s.update_time), "update")
        ]);
      });
      tbody.replaceChildren.apply(tbody, rows);
    }

    bindSelectAll($("select-all-servers"), tbody, selected);
    var live = new Live(function () {
      if (!host) {
        return getJSON("cluster_status?history=0").then(function (data) {
          live.settings(data);
          if (data.nodes.length) {
            host = data.nodes[0].addr;
            $("host").value = host;
            live.now();
          }
        });
      }
      return getJSON("node_info?host=" + encodeURIComponent(host)).then(function (n) {
        live.settings(n);
        addr = n.addr;
        render(n);
      }).catch(function (err) {
        if (err.status === 404) {
          $("node-section").classList.add("hidden");
          message("No node " + host + " (yet)", true);
          return;
        }
        throw err;
      });
    }, function (event) {
      if (event.type === "computation" || !addr) return 300;
      if (event.node !== addr) return null;
      return event.type === "avail" ? 2000 : 300;
    });
    setupSettings(live);
    $("suspend-node").addEventListener("click", function () {
      control("suspend_node", "host", [host], "a node").then(function () { live.now(); });
    });
    $("resume-node").addEventListener("click", function () {
      control("resume_node", "host", [host], "a node").then(function () { live.now(); });
    });
    $("suspend-servers").addEventListener("click", function () {
      control("suspend_server", "location", checkedValues(tbody), "servers").then(function () { live.now(); });
    });
    $("resume-servers").addEventListener("click", function () {
      control("resume_server", "location", checkedValues(tbody), "servers").then(function () { live.now(); });
    });
  }

  // -- Server page ------------------------------------------------------------------

  function serverPage() {
    var location = query("location") || sessionStorage.getItem("dispycos-server") || "";
    var limit = query("limit") || "100";
    var tbody = document.querySelector("#tasks tbody");
    var finished = document.querySelector("#finished tbody");
    var selected = new Set();
    var terminating = new Set();
    var nodeAddr = null;
    $("location").value = location;
    $("limit").value = limit;
    if (location) sessionStorage.setItem("dispycos-server", location);
    rememberLinks();
    $("choose").addEventListener("submit", function (e) {
      e.preventDefault();
      window.location.search = "?location=" + encodeURIComponent($("location").value.trim()) +
        "&limit=" + encodeURIComponent($("limit").value || "0");
    });

    function render(s) {
      $("server-section").classList.remove("hidden");
      $("server-title").textContent = s.location;
      $("d-location").textContent = s.location;
      $("d-node").textContent = s.node_name && s.node_name !== s.node ? s.node_name + " (" + s.node + ")" : s.node;
      $("d-node").href = "node.html?host=" + encodeURIComponent(s.node);
      $("d-status").textContent = s.status;
      $("d-submitted").textContent = s.tasks_submitted;
      $("d-running").textContent = s.tasks_running;
      $("d-done").textContent = s.tasks_done;
      $("d-update").textContent = fmtTime(s.update_time);
      sessionStorage.setItem("dispycos-node", s.node);
      rememberLinks();
      showClosed(s.computation);
      var now = Date.now() / 1000;
      var ids = new Set();
      var rows = s.tasks.map(function (t) {
        ids.add(t.task);
        var args = [t.args, t.kwargs].filter(function (x) { return x; }).join(", ");
        var tr = el("tr", { "data-task": t.task, className: terminating.has(t.task) ? "terminating" : "" }, [
          selectBox(t.task, selected),
          td(t.name, "name"),
          td(t.task, "id"),
          td(s.show_task_args ? args : "(hidden)", "args"),
          td(fmtTime(t.start_time), "start"),
          td(fmtDuration(now - t.start_time), "num")
        ]);
        return tr;
      });
      selected.forEach(function (id) { if (!ids.has(id)) selected.delete(id); });
      terminating.forEach(function (id) { if (!ids.has(id)) terminating.delete(id); });
      tbody.replaceChildren.apply(tbody, rows);
      $("no-tasks").classList.toggle("hidden", s.tasks.length > 0);
      finished.replaceChildren.apply(finished, (s.finished || []).map(function (f) {
        return el("tr", { "data-task": f.task }, [
          td(f.name, "name"), td(f.task, "id"), td(f.outcome, "outcome"),
          td(fmtTime(f.start_time), "start"), td(fmtTime(f.end_time), "end")
        ]);
      }));
    }

    bindSelectAll($("select-all-tasks"), tbody, selected);
    var live = new Live(function () {
      if (!location) {
        return getJSON("cluster_status?history=0").then(function (data) {
          live.settings(data);
          message("Give a server location, or pick a server on a Node page", false);
        });
      }
      return getJSON("server_info?location=" + encodeURIComponent(location) + "&limit=" + encodeURIComponent(limit))
        .then(function (s) { live.settings(s); nodeAddr = s.node; render(s); })
        .catch(function (err) {
          if (err.status === 404) {
            $("server-section").classList.add("hidden");
            message("No server " + location + " (yet)", true);
            return;
          }
          throw err;
        });
    }, function (event) {
      if (event.type === "computation" || event.server === location) return 300;
      if (event.type === "node" && event.node === nodeAddr) return 300;
      return null;
    });
    setupSettings(live);

    $("terminate-tasks").addEventListener("click", function () {
      var ids = checkedValues(tbody);
      if (!ids.length) { message("Select tasks to terminate first", true); return; }
      if (!window.confirm("Terminate " + ids.length + " task" + (ids.length > 1 ? "s" : "") + "?\n\n" + ids.join("\n"))) {
        message("Not terminated");
        return;
      }
      postForm("terminate_tasks", ids.map(function (id) { return ["task", id]; })).then(function (done) {
        done.forEach(function (id) { terminating.add(id); selected.delete(id); });
        message(done.length ? "Terminating " + done.join(", ") : "No task terminated (already finished?)");
        live.now();
      }).catch(function (err) { message("Terminate failed: " + err.message, true); });
    });
    $("suspend-server").addEventListener("click", function () {
      control("suspend_server", "location", [location], "a server").then(function () { live.now(); });
    });
    $("resume-server").addEventListener("click", function () {
      control("resume_server", "location", [location], "a server").then(function () { live.now(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.body.dataset.page;
    if (page === "cluster") clusterPage();
    else if (page === "node") nodePage();
    else if (page === "server") serverPage();
  });

  window.dispycosMonitor = { drawChart: drawChart, fmtBytes: fmtBytes, addrKey: addrKey };
})();
