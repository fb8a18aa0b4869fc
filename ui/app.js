// The xdt dashboard: polls /metrics.json every second and renders fleet totals, the agent
// list, the selected agent's charts, counters and AF_XDP steering, and the recent events table
// (with what the agent read of each steered packet).
// Every string that comes from an agent is inserted with textContent, never parsed as HTML.
(function () {
  'use strict';

  const REFRESH_MS = 1000;
  const FETCH_TIMEOUT_MS = 4000;
  const MAX_EVENTS = 200;
  const MAX_LABEL_ROWS = 12;
  const Charts = window.XdtCharts;

  const state = {
    nodes: [], // normalised views of data.nodes
    totalEvents: null,
    lastOk: 0,
    renders: 0,
    failures: 0,
    selected: null, // key of the selected agent
    sort: 'problems',
    filter: '',
    scope: 'all',
    flowsBy: 'bytes', // the top-flows table's ranking: 'bytes' or 'packets'
    paused: false,
    timer: 0,
    rows: new Map(), // agent key -> row elements, reused between refreshes
  };

  // ---------- small helpers ----------

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const orDash = (v) => (v === undefined || v === null || v === '' ? '-' : String(v));
  const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const fmtInt = (v) => (isNum(v) ? intFmt.format(v) : '-');

  function fmtSI(v, unit) {
    if (!isNum(v)) return '-';
    const a = Math.abs(v);
    for (const [f, p] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= f) {
        const s = v / f;
        return (Math.abs(s) >= 100 ? s.toFixed(0) : s.toFixed(1)) + ' ' + p + unit;
      }
    }
    return (Number.isInteger(v) || a >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' ' + unit;
  }

  // Axis labels: short, no unit (the axis title has it).
  function fmtAxis(v) {
    const a = Math.abs(v);
    for (const [f, p] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= f) return +(v / f).toFixed(1) + p;
    }
    return +v.toFixed(a < 10 ? 1 : 0) + '';
  }

  const fmtPps = (v) => fmtSI(v, 'pkt/s');
  const fmtBps = (v) => fmtSI(v, 'bit/s');
  const fmtBytes = (v) => fmtSI(v, 'B');

  function pct(part, whole) {
    if (!isNum(part) || !isNum(whole) || whole <= 0) return '-';
    const p = (part / whole) * 100;
    return (p > 0 && p < 0.1 ? '<0.1' : p.toFixed(p >= 10 ? 0 : 1)) + '%';
  }

  function pad(n, w) {
    return String(n).padStart(w, '0');
  }

  function clockMs(ms) {
    const d = new Date(ms);
    return pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2) + '.' + pad(d.getMilliseconds(), 3);
  }

  function clock(ms) {
    const d = new Date(ms);
    return pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2);
  }

  function ago(unixSeconds) {
    if (!isNum(unixSeconds)) return '-';
    const s = Math.max(0, Math.round(Date.now() / 1000 - unixSeconds));
    if (s < 2) return 'just now';
    if (s < 120) return s + ' s ago';
    if (s < 7200) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' days ago';
  }

  // Stable colour per label name, so a label keeps its colour in bars and in the table.
  const LABEL_COLORS = ['#2563eb', '#0d9488', '#d97706', '#7c3aed', '#db2777', '#059669', '#ea580c', '#4f46e5', '#0891b2', '#65a30d', '#9333ea', '#be123c'];
  function labelColor(name) {
    let h = 2166136261;
    for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
    return LABEL_COLORS[(h >>> 0) % LABEL_COLORS.length];
  }

  // What exists and where it is shown comes from central's /catalogue.json (the probe's
  // counters, the steering counters, the agent's figures), fetched once: no list here.
  // Each is [{ name, unit, help, rate?, panel: { panel, label, hint?, severity? } | null }].
  const catalogue = { probe: [], steering: [], agent: [] };
  const SEVERITY_ORDER = { loss: 0, warn: 1, info: 2 };

  function setCatalogue(data) {
    const list = (v) => (Array.isArray(v) ? v.filter((e) => e && typeof e === 'object' && typeof e.name === 'string') : []);
    catalogue.probe = list(data.probe_counters);
    catalogue.steering = list(data.steering);
    catalogue.agent = list(data.agent);
    catalogue.loaded = true;
  }

  const inPanel = (entries, panel) => entries.filter((e) => e.panel && e.panel.panel === panel);

  const DNS_TYPES = { 1: 'A', 2: 'NS', 5: 'CNAME', 6: 'SOA', 12: 'PTR', 15: 'MX', 16: 'TXT', 28: 'AAAA', 33: 'SRV', 35: 'NAPTR', 43: 'DS', 48: 'DNSKEY', 64: 'SVCB', 65: 'HTTPS', 255: 'ANY' };

  function dnsType(t) {
    if (!isNum(t)) return '-';
    return DNS_TYPES[t] || 'TYPE' + t;
  }

  function fmtLatency(ns) {
    if (!isNum(ns)) return '-';
    if (ns < 1e3) return ns.toFixed(0) + ' ns';
    if (ns < 1e6) return (ns / 1e3).toFixed(ns < 1e4 ? 1 : 0) + ' µs';
    if (ns < 1e9) return (ns / 1e6).toFixed(ns < 1e7 ? 1 : 0) + ' ms';
    return (ns / 1e9).toFixed(1) + ' s';
  }

  // A loss rate for a hint: "3.2/s now", nothing when nothing is being lost.
  function fmtPerSecond(v) {
    if (!isNum(v) || v <= 0) return '';
    return (v >= 100 ? fmtSI(v, '/s').replace(' ', '') : (v < 10 ? v.toFixed(1) : v.toFixed(0)) + '/s') + ' now';
  }

  const PROTOCOLS = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 47: 'GRE', 50: 'ESP', 132: 'SCTP' };
  const TCP_FLAGS = [[1, 'FIN'], [2, 'SYN'], [4, 'RST'], [8, 'PSH'], [16, 'ACK'], [32, 'URG'], [64, 'ECE'], [128, 'CWR']];

  function protoName(p) {
    if (!isNum(p)) return orDash(p);
    return PROTOCOLS[p] || String(p);
  }

  function tcpFlags(f, proto) {
    if (!isNum(f)) return '-';
    if (proto !== 6 && f === 0) return '-';
    const names = TCP_FLAGS.filter(([bit]) => f & bit).map(([, n]) => n);
    return names.length ? names.join(' ') : '-';
  }

  function endpoint(addr, port) {
    const a = orDash(addr);
    if (!isNum(port) || port === 0) return a;
    return (a.includes(':') ? '[' + a + ']' : a) + ':' + port;
  }

  // ---------- data model ----------

  function num(v) {
    return isNum(v) ? v : null;
  }

  function obj(v) {
    return v && typeof v === 'object' && !Array.isArray(v) ? v : {};
  }

  // A catalogue name with dots is a path into the object (`flows.state_full`).
  function pick(o, path) {
    return path.split('.').reduce((v, k) => obj(v)[k], o);
  }

  function normalise(nodes) {
    const seen = new Map();
    return nodes.filter((n) => n && typeof n === 'object').map((n) => {
      const id = orDash(n.agent_id);
      const k = seen.get(id) || 0;
      seen.set(id, k + 1);
      const counters = obj(n.counters);
      const rates = obj(n.rates);
      const agent = obj(n.agent);
      // The loss panel: the probe's counters (a node without one may carry it at the top
      // level, as `lost_events`) and the agent's figures, losses first.
      const losses = inPanel(catalogue.probe, 'losses')
        .map((c) => ({ panel: c.panel, value: num(counters[c.name]) !== null ? counters[c.name] : num(n[c.name]) }))
        .concat(inPanel(catalogue.agent, 'losses').map((c) => ({ panel: c.panel, value: num(pick(agent, c.name)) })))
        .sort((a, b) => (SEVERITY_ORDER[a.panel.severity] ?? 3) - (SEVERITY_ORDER[b.panel.severity] ?? 3));
      // Telemetry loss: events that never reached the central. Packets dropped by a `drop`
      // rule are intended and shown apart.
      const lossParts = losses.filter((l) => l.panel.severity === 'loss' && l.value !== null).map((l) => l.value);
      const steering = agent.steering && typeof agent.steering === 'object' && !Array.isArray(agent.steering) ? agent.steering : null;
      const steerLossParts = steering ? inPanel(catalogue.steering, 'losses').map((c) => num(steering[c.name])).filter((x) => x !== null) : [];
      const events = Array.isArray(n.recent_events) ? n.recent_events.filter((e) => e && typeof e === 'object') : [];
      let payload = Array.isArray(n.payload_history) ? n.payload_history : null;
      if (!payload) {
        payload = events
          .filter((e) => isNum(e.timestamp_unix_ns) && isNum(e.payload_len))
          .map((e) => [e.timestamp_unix_ns / 1e9, e.payload_len]);
      }
      return {
        key: k ? id + '\u0000' + k : id,
        id,
        hostname: typeof n.hostname === 'string' ? n.hostname : null,
        iface: typeof n.interface === 'string' ? n.interface : null,
        connected: typeof n.connected === 'boolean' ? n.connected : null,
        lastSeen: num(n.last_seen_unix),
        totalEvents: num(n.total_events),
        labels: Array.isArray(n.label_counts) ? n.label_counts.filter((l) => l && typeof l === 'object') : [],
        events,
        counters,
        pps: num(rates.packets_per_second),
        bps: num(rates.bits_per_second),
        rateHistory: Array.isArray(n.rate_history) ? n.rate_history : [],
        payloadHistory: payload,
        agent,
        losses,
        loss: lossParts.length ? lossParts.reduce((a, b) => a + b, 0) : null,
        steering,
        steerRates: obj(n.steering_rates),
        // The top talkers of the last minute, when the agent sends flows.
        flows: n.flows && typeof n.flows === 'object' && !Array.isArray(n.flows) ? n.flows : null,
        // Loss indications of the steering path, for sorting and flagging only: the kernel
        // counts some drops twice (copy mode: fill ring empty is also an RX drop), so this
        // is not shown as a number of packets.
        steerLoss: steerLossParts.length ? steerLossParts.reduce((a, b) => a + b, 0) : null,
      };
    });
  }

  // Disconnected agents first, then agents that lose data, then by name: the ones that need
  // an operator are at the top of a long list.
  function severity(v) {
    if (v.connected === false) return 0;
    if (v.loss > 0 || v.steerLoss > 0) return 1;
    if (v.connected === null) return 2;
    return 3;
  }

  const byName = (a, b) => a.id.localeCompare(b.id, undefined, { numeric: true });
  const SORTS = {
    problems: (a, b) => severity(a) - severity(b) || byName(a, b),
    name: byName,
    rate: (a, b) => (b.pps || 0) - (a.pps || 0) || byName(a, b),
    loss: (a, b) => (b.loss || 0) - (a.loss || 0) || (b.steerLoss || 0) - (a.steerLoss || 0) || byName(a, b),
  };

  function visibleNodes() {
    const f = state.filter.trim().toLowerCase();
    const list = f
      ? state.nodes.filter((v) => [v.id, v.hostname, v.iface].some((s) => s && s.toLowerCase().includes(f)))
      : state.nodes.slice();
    return list.sort(SORTS[state.sort] || SORTS.problems);
  }

  function selectedNode() {
    return state.nodes.find((v) => v.key === state.selected) || null;
  }

  // ---------- rendering ----------

  function stateText(v) {
    if (v.connected === true) return ['Connected', 'pill--ok'];
    if (v.connected === false) return ['Disconnected', 'pill--bad'];
    return ['Unknown', 'pill--muted'];
  }

  function renderTotals() {
    const nodes = state.nodes;
    const connected = nodes.filter((v) => v.connected === true).length;
    const down = nodes.filter((v) => v.connected === false).length;
    const known = nodes.some((v) => v.connected !== null);
    $('t-agents').textContent = nodes.length ? (known ? connected + ' / ' + nodes.length : String(nodes.length)) : '0';
    $('t-agents-sub').textContent = down ? down + ' disconnected' : nodes.length ? 'all reporting' : 'none yet';
    $('t-agents-sub').classList.toggle('bad', down > 0);

    $('t-events').textContent = fmtInt(state.totalEvents);
    $('t-events-sub').textContent = 'sampled packet events';

    const sum = (f) => {
      const vals = nodes.map(f).filter(isNum);
      return vals.length ? vals.reduce((a, b) => a + b, 0) : null;
    };
    $('t-pps').textContent = fmtPps(sum((v) => v.pps));
    $('t-bps').textContent = fmtBps(sum((v) => v.bps));
    $('t-packets').textContent = fmtInt(sum((v) => v.counters.total_packets));
    const bytes = sum((v) => v.counters.total_bytes);
    $('t-bytes').textContent = bytes === null ? '' : fmtBytes(bytes);

    const loss = sum((v) => v.loss);
    const affected = nodes.filter((v) => v.loss > 0).length;
    $('t-loss').textContent = fmtInt(loss);
    $('t-loss-sub').textContent = loss === null ? '' : affected ? affected + (affected === 1 ? ' agent' : ' agents') + ' losing events' : 'no events lost';
    $('t-loss-tile').classList.toggle('tile--bad', loss > 0);

    // Steering appears only when some agent steers.
    const steering = nodes.filter((v) => v.steering);
    const steerLosing = steering.filter((v) => v.steerLoss > 0).length;
    $('t-steer-tile').hidden = steering.length === 0;
    $('t-steer').textContent = fmtPps(sum((v) => (v.steering ? num(v.steerRates.received_packets_per_second) : null)));
    const agentsText = steering.length + (steering.length === 1 ? ' agent' : ' agents');
    $('t-steer-sub').textContent = !steering.length ? '' : steerLosing ? steerLosing + ' of ' + agentsText + ' losing' : agentsText + ', no loss';
    $('t-steer-sub').title = steerLosing ? steerLosing + ' of the ' + agentsText + ' that steer packets report losses on the way' : '';
    $('t-steer-tile').classList.toggle('tile--alert', steerLosing > 0);
  }

  function makeRow(key) {
    const li = el('li');
    const btn = el('button', 'agent');
    btn.type = 'button';
    const dot = el('span', 'dot');
    const main = el('span', 'agent__main');
    const id = el('span', 'agent__id');
    const sub = el('span', 'agent__sub');
    main.append(id, sub);
    const spark = el('canvas', 'spark');
    spark.setAttribute('aria-hidden', 'true');
    const nums = el('span', 'agent__nums');
    const rate = el('span', 'agent__rate');
    const loss = el('span', 'agent__loss');
    const steerLoss = el('span', 'agent__loss agent__loss--steer', 'steer loss');
    steerLoss.title = 'AF_XDP steering is losing packets: see the steering card';
    nums.append(rate, loss, steerLoss);
    btn.append(dot, main, spark, nums);
    li.append(btn);
    btn.addEventListener('click', () => select(key));
    return { li, btn, dot, id, sub, spark, rate, loss, steerLoss };
  }

  function updateRow(row, v) {
    row.id.textContent = v.id;
    row.sub.textContent = [v.hostname, v.iface].filter(Boolean).join(' · ') || '-';
    row.btn.title = v.id;
    const [text] = stateText(v);
    row.dot.className = 'dot ' + (v.connected === true ? 'dot--ok' : v.connected === false ? 'dot--bad' : 'dot--muted');
    row.dot.title = text;
    row.btn.classList.toggle('agent--down', v.connected === false);
    row.btn.setAttribute('aria-pressed', String(v.key === state.selected));
    row.rate.textContent = v.connected === false ? (v.lastSeen === null ? 'offline' : ago(v.lastSeen)) : fmtPps(v.pps);
    row.rate.classList.toggle('agent__rate--down', v.connected === false);
    if (v.loss > 0) {
      row.loss.textContent = 'loss ' + fmtSI(v.loss, '').trim();
      row.loss.hidden = false;
    } else {
      row.loss.textContent = '';
      row.loss.hidden = true;
    }
    row.steerLoss.hidden = !(v.steerLoss > 0);
    const pps = v.rateHistory.slice(-60).map((p) => (Array.isArray(p) ? p[1] : NaN));
    Charts.sparkline(row.spark, pps, Charts.cssVar('--pps', '#2563eb'));
  }

  function renderAgents() {
    const list = $('agent-list');
    const visible = visibleNodes();
    const keys = new Set(state.nodes.map((v) => v.key));
    for (const [k, row] of state.rows) {
      if (!keys.has(k)) {
        row.li.remove();
        state.rows.delete(k);
      }
    }
    const want = visible.map((v) => {
      let row = state.rows.get(v.key);
      if (!row) {
        row = makeRow(v.key);
        state.rows.set(v.key, row);
      }
      return row;
    });
    const current = Array.from(list.children);
    if (want.length !== current.length || want.some((r, i) => r.li !== current[i])) {
      list.replaceChildren(...want.map((r) => r.li));
    }
    // Draw after insertion: a canvas has no size until it is in the document.
    visible.forEach((v, i) => updateRow(want[i], v));

    $('agent-count').textContent = state.filter && visible.length !== state.nodes.length
      ? visible.length + ' of ' + state.nodes.length
      : String(state.nodes.length);
    const empty = $('agent-empty');
    empty.hidden = visible.length > 0;
    empty.textContent = state.nodes.length ? 'No agent matches the filter.' : 'No agent has connected yet.';
    $('agent-hint').hidden = state.nodes.length > 5;
  }

  function barRow(name, color, value, max, right, share) {
    const row = el('div', 'bar');
    const head = el('div', 'bar__head');
    const nameEl = el('span', 'bar__name');
    const sw = el('span', 'swatch');
    sw.style.backgroundColor = color;
    nameEl.append(sw, document.createTextNode(name));
    nameEl.title = name;
    head.append(nameEl, el('span', 'bar__value', right), el('span', 'bar__share', share));
    const track = el('div', 'bar__track');
    const fill = el('div', 'bar__fill');
    fill.style.backgroundColor = color;
    fill.style.width = (max > 0 && isNum(value) ? Math.max(0, Math.min(100, (value / max) * 100)) : 0).toFixed(2) + '%';
    track.append(fill);
    row.append(head, track);
    return row;
  }

  function renderLabels(v) {
    const box = $('d-labels');
    const labels = v.labels
      .map((l) => ({ name: orDash(l.label), packets: num(l.packets), bytes: num(l.bytes) }))
      .sort((a, b) => (b.packets || 0) - (a.packets || 0) || a.name.localeCompare(b.name));
    if (!labels.length) {
      box.replaceChildren(el('p', 'empty', 'No labelled packets yet.'));
      return;
    }
    const total = labels.reduce((a, l) => a + (l.packets || 0), 0);
    const max = labels[0].packets || 0;
    const rows = labels.slice(0, MAX_LABEL_ROWS).map((l) =>
      barRow(l.name, labelColor(l.name), l.packets, max, fmtInt(l.packets) + ' pkts · ' + fmtBytes(l.bytes), pct(l.packets, total)));
    if (labels.length > MAX_LABEL_ROWS) {
      rows.push(el('p', 'more', '+ ' + (labels.length - MAX_LABEL_ROWS) + ' more labels'));
    }
    box.replaceChildren(...rows);
  }

  // Colours of the protocol bars without a CSS variable --<label> (--tcp, --udp, ...).
  const PROTO_COLORS = ['#2563eb', '#0d9488', '#d97706', '#64748b', '#7c3aed', '#db2777'];

  function renderProtocols(v) {
    const c = v.counters;
    const vals = inPanel(catalogue.probe, 'protocols').map((p, i) => ({
      name: p.panel.label,
      value: num(c[p.name]),
      color: Charts.cssVar('--' + String(p.panel.label).toLowerCase(), PROTO_COLORS[i % PROTO_COLORS.length]),
    }));
    const known = vals.filter((p) => p.value !== null);
    const stack = $('d-proto-stack');
    const box = $('d-protos');
    if (!known.length) {
      stack.replaceChildren();
      stack.hidden = true;
      box.replaceChildren(el('p', 'empty', 'No protocol counters reported.'));
      return;
    }
    const total = known.reduce((a, p) => a + p.value, 0);
    stack.hidden = false;
    stack.replaceChildren(...known.filter((p) => p.value > 0).map((p) => {
      const seg = el('span', 'stack__seg');
      seg.style.backgroundColor = p.color;
      seg.style.flexGrow = String(p.value);
      return seg;
    }));
    const max = Math.max(...known.map((p) => p.value));
    box.replaceChildren(...vals.map((p) => barRow(p.name, p.color, p.value, max, fmtInt(p.value) + ' pkts', pct(p.value, total))));
  }

  // kind: 'loss' turns red above zero, 'warn' amber, 'info' stays neutral. `now`, if given,
  // is the current rate ("3.2/s now"), shown when something is being lost right now.
  function lossItem(label, value, hint, kind, now) {
    const item = el('div', 'loss loss--' + kind);
    if (value > 0) item.classList.add('loss--nonzero');
    if (value === null) item.classList.add('loss--unknown');
    const valueEl = el('div', 'loss__value', fmtInt(value));
    if (now) {
      valueEl.append(el('span', 'loss__now', now));
      item.classList.add('loss--ongoing');
    }
    item.append(valueEl, el('div', 'loss__label', label), el('div', 'loss__hint', hint));
    return item;
  }

  function flowItem(label, rate, total) {
    const item = el('div', 'flow');
    item.append(el('div', 'flow__label', label), el('div', 'flow__rate', rate), el('div', 'flow__total', total));
    return item;
  }

  function renderSteering(v) {
    const card = $('d-steer-card');
    const s = v.steering;
    card.hidden = !s;
    if (!s) return;
    const r = v.steerRates;
    const mode = typeof s.mode === 'string' && s.mode ? s.mode : '-';
    const pill = $('d-steer-mode');
    pill.textContent = mode === 'zerocopy' ? 'zero-copy' : mode;
    pill.className = 'pill ' + (mode === 'zerocopy' ? 'pill--ok' : mode === 'copy' ? 'pill--warn' : 'pill--muted');
    pill.title = mode === 'copy' ? 'The driver did not grant zero-copy: frames are copied, at a higher CPU cost' : 'Mode the driver granted';
    $('d-steer-reinject').textContent = orDash(s.reinject);
    $('d-steer-sockets').textContent = isNum(s.sockets) ? s.sockets + (s.sockets === 1 ? ' (1 queue)' : ' (one per queue)') : '-';
    // Bytes are shown as their bit rate (the rate's key says bits) and a byte total.
    $('d-steer-flow').replaceChildren(...inPanel(catalogue.steering, 'flow').map((c) => c.unit === 'By'
      ? flowItem(c.panel.label, fmtBps(num(r[c.rate])), fmtBytes(num(s[c.name])))
      : flowItem(c.panel.label, fmtPps(num(r[c.rate])), fmtInt(num(s[c.name])) + ' pkts')));
    $('d-steer-loss').replaceChildren(...inPanel(catalogue.steering, 'losses').map((c) =>
      lossItem(c.panel.label, num(s[c.name]), c.panel.hint, c.panel.severity, fmtPerSecond(num(r[c.rate])))));
  }

  const FLOW_ENDS = { idle: 'idle timeout', active: 'active timeout', end: 'FIN/RST', forced: 'agent stopped', resources: 'agent state full' };

  // The top talkers of the minute: ranked by bytes or packets as central ranked them, then
  // the rest of the minute's traffic in one row. Agent-supplied text, so textContent only.
  function renderFlows(v) {
    const card = $('d-flows-card');
    const f = v.flows;
    card.hidden = !f;
    if (!f) return;
    const byBytes = state.flowsBy !== 'packets';
    const top = (Array.isArray(byBytes ? f.top_bytes : f.top_packets) ? (byBytes ? f.top_bytes : f.top_packets) : [])
      .filter((x) => x && typeof x === 'object');
    const other = obj(byBytes ? f.other_by_bytes : f.other_by_packets);
    const total = obj(f.total);
    const whole = num(byBytes ? total.bytes : total.packets);
    const frag = document.createDocumentFragment();
    top.forEach((x, i) => {
      const tr = el('tr', 'flow-row');
      const label = typeof x.label === 'string' ? x.label : null;
      const labelCell = el('td');
      if (label !== null) {
        const tag = el('span', 'tag');
        const sw = el('span', 'swatch');
        sw.style.backgroundColor = labelColor(label);
        tag.append(sw, document.createTextNode(label));
        labelCell.append(tag);
      } else {
        labelCell.textContent = '-';
      }
      const vlans = Array.isArray(x.vlans) ? x.vlans.filter((id) => isNum(id) && id > 0) : [];
      const src = el('td', 'mono', endpoint(x.src, x.src_port));
      if (vlans.length) src.title = 'VLAN ' + vlans.join(' / ');
      const end = typeof x.end === 'string' ? x.end : null;
      tr.append(
        cell(String(i + 1), 'num'),
        cell(protoName(x.protocol)),
        src,
        cell(endpoint(x.dst, x.dst_port), 'mono'),
        labelCell,
        cell(fmtInt(num(x.packets)), 'num'),
        cell(fmtBytes(num(x.bytes)), 'num'),
        cell(pct(num(byBytes ? x.bytes : x.packets), whole), 'num'),
        cell(isNum(x.handshake_ns) ? fmtLatency(x.handshake_ns) : '-', 'num flow-row__handshake'),
        cell(tcpFlags(x.tcp_flags, x.protocol), 'mono'),
        cell(end === null ? '-' : FLOW_ENDS[end] || end),
      );
      frag.append(tr);
    });
    const rest = el('tr', 'flow-row flow-row--other');
    const restLabel = el('td', null, 'Other flows');
    restLabel.colSpan = 5;
    rest.append(
      restLabel,
      cell(fmtInt(num(other.packets)), 'num'),
      cell(fmtBytes(num(other.bytes)), 'num'),
      cell(pct(num(byBytes ? other.bytes : other.packets), whole), 'num'),
      el('td'), el('td'), el('td'),
    );
    frag.append(rest);
    $('d-flows-body').replaceChildren(frag);
    const span = num(f.window_seconds);
    $('d-flows-window').textContent = 'last ' + (span === null ? '-' : Math.round(span) + ' s') + ', ' +
      (isNum(f.records_per_second) ? f.records_per_second.toFixed(f.records_per_second < 10 ? 1 : 0) : '-') + ' flow records/s';
    const notes = [fmtInt(num(f.flows_kept)) + ' of at most ' + fmtInt(num(f.max_flows_kept)) + ' flows kept'];
    if (num(f.untracked_records) > 0 || num(f.evicted_flows) > 0) {
      notes.push(fmtInt(num(f.untracked_records)) + ' records of flows not kept and ' + fmtInt(num(f.evicted_flows)) + ' pushed out (their traffic is in Other flows)');
    }
    $('d-flows-note').textContent = notes.join('; ');
  }

  function setFlowsBy(by) {
    state.flowsBy = by;
    $('flows-by-bytes').setAttribute('aria-pressed', String(by === 'bytes'));
    $('flows-by-packets').setAttribute('aria-pressed', String(by === 'packets'));
    const v = selectedNode();
    if (v) renderFlows(v);
  }

  function renderLoss(v) {
    $('d-loss').replaceChildren(...v.losses.map((l) => lossItem(l.panel.label, l.value, l.panel.hint, l.panel.severity)));
  }

  const CHART_WINDOW_S = 300;

  // Both timelines share one time axis so a burst can be read across them.
  function chartRange(lists) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const list of lists) {
      for (const p of list) {
        if (!Array.isArray(p) || !isNum(p[0])) continue;
        if (p[0] < lo) lo = p[0];
        if (p[0] > hi) hi = p[0];
      }
    }
    if (hi === -Infinity) return null;
    return [Math.max(lo, hi - CHART_WINDOW_S), hi];
  }

  function renderCharts(v) {
    const rate = [];
    const bits = [];
    for (const p of v.rateHistory) {
      if (!Array.isArray(p)) continue;
      rate.push([p[0], p[1]]);
      bits.push([p[0], p[2]]);
    }
    const range = chartRange([v.rateHistory, v.payloadHistory]);
    Charts.timeChart($('c-rate'), {
      series: [
        { points: rate, color: Charts.cssVar('--pps', '#2563eb'), axis: 'left', style: 'area', name: 'packets', format: fmtPps },
        { points: bits, color: Charts.cssVar('--bps', '#f59e0b'), axis: 'right', style: 'line', name: 'bits', format: fmtBps },
      ],
      left: { title: 'packets/s', format: fmtAxis },
      right: { title: 'bits/s', format: fmtAxis },
      xTitle: 'time',
      minSpan: 30,
      range,
      padLeft: 60,
      padRight: 60,
      emptyText: 'no rate samples yet',
    });
    Charts.timeChart($('c-payload'), {
      series: [{ points: v.payloadHistory, color: Charts.cssVar('--payload', '#7c3aed'), axis: 'left', style: 'dots', name: 'payload', format: (b) => fmtInt(b) + ' bytes' }],
      left: { title: 'payload bytes', format: fmtAxis },
      xTitle: 'time',
      minSpan: 30,
      range,
      padLeft: 60,
      padRight: 60,
      emptyText: 'no sampled events yet',
    });
  }

  function renderDetail() {
    const v = selectedNode();
    $('detail').hidden = !v;
    $('detail-empty').hidden = Boolean(v);
    if (!v) return;
    $('d-id').textContent = v.id;
    const [text, cls] = stateText(v);
    const pill = $('d-state');
    pill.textContent = text;
    pill.className = 'pill ' + cls;
    $('d-host').textContent = orDash(v.hostname);
    $('d-iface').textContent = orDash(v.iface);
    $('d-seen').textContent = v.lastSeen === null ? '-' : ago(v.lastSeen) + ' (' + clock(v.lastSeen * 1000) + ')';
    const ns = num(v.agent.probe_ns_per_packet);
    $('d-probe').textContent = ns === null ? '-' : ns.toFixed(1) + ' ns/packet';
    $('d-pps').textContent = fmtPps(v.pps);
    $('d-bps').textContent = fmtBps(v.bps);
    $('d-packets').textContent = fmtInt(num(v.counters.total_packets));
    $('d-bytes').textContent = fmtBytes(num(v.counters.total_bytes));
    $('d-events').textContent = fmtInt(v.totalEvents);
    const v4 = num(v.counters.ipv4_packets);
    const v6 = num(v.counters.ipv6_packets);
    $('d-ipver').textContent = v4 === null && v6 === null ? '-' : pct(v4, (v4 || 0) + (v6 || 0)) + ' / ' + pct(v6, (v4 || 0) + (v6 || 0));
    renderLabels(v);
    renderProtocols(v);
    renderLoss(v);
    renderSteering(v);
    renderFlows(v);
    renderCharts(v);
  }

  function cell(text, cls) {
    return el('td', cls, text);
  }

  const EVENT_COLUMNS = 12;

  // The line under a steered packet's event: what the agent read of it (the HTTP request line
  // and Host, or the DNS question), the frame length, the latency from the XDP hook to the
  // agent, and whether it went back. Agent-supplied text, so textContent only.
  function inspectionRow(ins) {
    const tr = el('tr', 'inspection');
    const td = el('td');
    td.colSpan = EVENT_COLUMNS;
    const what = el('span', 'inspection__what');
    const http = ins.http && typeof ins.http === 'object' ? ins.http : null;
    const dns = ins.dns && typeof ins.dns === 'object' ? ins.dns : null;
    const titles = [];
    if (http) {
      const method = orDash(http.method);
      const path = orDash(http.path);
      what.append(el('span', 'inspection__kind', 'HTTP'), el('span', 'inspection__method', method), el('span', 'inspection__main', path));
      titles.push(method + ' ' + path);
      if (typeof http.host === 'string' && http.host) {
        what.append(el('span', 'inspection__extra', 'Host ' + http.host));
        titles.push('Host: ' + http.host);
      }
    }
    if (dns) {
      const name = orDash(dns.name);
      const type = dnsType(dns.qtype);
      what.append(el('span', 'inspection__kind', 'DNS'), el('span', 'inspection__main', name), el('span', 'inspection__extra', type));
      titles.push('DNS ' + name + ' ' + type);
    }
    if (!titles.length) what.append(el('span', 'inspection__extra', 'steered (neither HTTP nor DNS)'));
    what.title = titles.join('\n');
    const facts = el('span', 'inspection__facts');
    facts.append(
      el('span', null, 'frame ' + (isNum(ins.frame_len) ? fmtInt(ins.frame_len) + ' B' : '-')),
      el('span', null, 'agent latency ' + fmtLatency(num(ins.agent_latency_ns))),
    );
    if (ins.reinjected === false) {
      const lost = el('span', 'action action--drop', 'not re-injected');
      lost.title = 'The agent could not re-inject this frame: it was lost';
      facts.append(lost);
    } else if (ins.reinjected === true) {
      facts.append(el('span', null, 're-injected'));
    }
    td.append(el('span', 'inspection__arrow', '↳'), what, facts);
    tr.append(td);
    return tr;
  }

  function renderEvents() {
    const sel = selectedNode();
    const sources = state.scope === 'one' ? (sel ? [sel] : []) : state.nodes;
    const events = [];
    for (const v of sources) for (const e of v.events) events.push({ v, e, t: isNum(e.timestamp_unix_ns) ? e.timestamp_unix_ns : -Infinity });
    events.sort((a, b) => b.t - a.t);
    const shown = events.slice(0, MAX_EVENTS);
    const frag = document.createDocumentFragment();
    for (const { v, e, t } of shown) {
      const tr = el('tr', 'event');
      const label = orDash(e.label);
      const labelCell = el('td');
      const tag = el('span', 'tag');
      const sw = el('span', 'swatch');
      sw.style.backgroundColor = labelColor(label);
      tag.append(sw, document.createTextNode(label));
      labelCell.append(tag);
      const action = orDash(e.action);
      const actionCell = el('td');
      actionCell.append(el('span', 'action action--' + (/^[a-z]+$/.test(action) ? action : 'other'), action));
      const ins = e.inspection && typeof e.inspection === 'object' ? e.inspection : null;
      const agentCell = cell(v.id, 'ellipsis');
      agentCell.title = v.id;
      tr.append(
        cell(t === -Infinity ? '-' : clockMs(t / 1e6), 'mono'),
        agentCell,
        labelCell,
        actionCell,
        cell(protoName(e.protocol)),
        cell(endpoint(e.src, e.src_port), 'mono'),
        cell(endpoint(e.dst, e.dst_port), 'mono'),
        cell(fmtInt(num(e.ip_len)), 'num'),
        cell(fmtInt(num(e.payload_len)), 'num'),
        cell(tcpFlags(e.tcp_flags, e.protocol), 'mono'),
        cell(fmtInt(num(e.rx_queue)), 'num'),
        cell(fmtInt(num(e.rule)), 'num'),
      );
      frag.append(tr);
      if (ins) {
        tr.classList.add('event--inspected');
        frag.append(inspectionRow(ins));
      }
    }
    $('events-body').replaceChildren(frag);
    $('events-empty').hidden = shown.length > 0;
    $('event-count').textContent = events.length > shown.length ? 'newest ' + shown.length + ' of ' + events.length : String(shown.length);
  }

  function render() {
    if (state.selected === null || !selectedNode()) {
      const first = visibleNodes()[0] || state.nodes[0];
      state.selected = first ? first.key : null;
    }
    renderTotals();
    renderAgents();
    renderDetail();
    renderEvents();
  }

  // ---------- connection state ----------

  function setConn(kind, text) {
    const pill = $('conn');
    pill.textContent = text;
    pill.className = 'pill ' + { live: 'pill--ok', down: 'pill--bad', paused: 'pill--warn', pending: 'pill--muted' }[kind];
    document.body.dataset.state = kind;
    document.title = kind === 'down' ? 'xdt dashboard (disconnected)' : 'xdt dashboard';
  }

  function onData(data) {
    if (!data || typeof data !== 'object' || !Array.isArray(data.nodes)) {
      throw new Error('unexpected response: no "nodes" list');
    }
    state.nodes = normalise(data.nodes);
    state.totalEvents = num(data.total_events);
    state.lastOk = Date.now();
    state.failures = 0;
    render();
    state.renders += 1;
    document.body.dataset.renders = String(state.renders);
    $('banner').hidden = true;
    setConn('live', 'Live');
    $('updated').textContent = 'updated ' + clock(state.lastOk);
  }

  function onError(err) {
    state.failures += 1;
    setConn('down', 'Disconnected');
    const why = err && err.name === 'AbortError' ? 'no answer within ' + FETCH_TIMEOUT_MS / 1000 + ' s' : (err && err.message) || String(err);
    const last = state.lastOk ? 'Last update at ' + clock(state.lastOk) + '; the figures below are from then.' : 'No data received yet.';
    $('banner-text').textContent = why + '. Retrying every second (' + state.failures + (state.failures === 1 ? ' failure). ' : ' failures in a row). ') + last;
    $('banner').hidden = false;
    $('updated').textContent = state.lastOk ? 'last update ' + clock(state.lastOk) : 'no data yet';
  }

  async function fetchJson(url, signal) {
    const res = await fetch(url, { cache: 'no-store', signal, headers: { Accept: 'application/json' } });
    if (!res.ok) throw new Error('HTTP ' + res.status + ' from /' + url);
    try {
      return await res.json();
    } catch (e) {
      throw new Error('/' + url + ' is not valid JSON');
    }
  }

  async function tick() {
    state.timer = 0;
    if (state.paused) return;
    const started = Date.now();
    const ctrl = new AbortController();
    const timeout = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      if (!catalogue.loaded) setCatalogue(await fetchJson('catalogue.json', ctrl.signal));
      const data = await fetchJson('metrics.json', ctrl.signal);
      if (!state.paused) onData(data);
    } catch (err) {
      if (!state.paused) onError(err);
    } finally {
      clearTimeout(timeout);
    }
    if (!state.paused && !state.timer) state.timer = setTimeout(tick, Math.max(100, REFRESH_MS - (Date.now() - started)));
  }

  // ---------- interaction ----------

  function select(key) {
    state.selected = key;
    const v = selectedNode();
    if (v) history.replaceState(null, '', '#agent=' + encodeURIComponent(v.key));
    render();
  }

  function readHash() {
    const m = /^#agent=(.*)$/.exec(location.hash);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (e) {
      return null;
    }
  }

  function setScope(scope) {
    state.scope = scope;
    $('scope-all').setAttribute('aria-pressed', String(scope === 'all'));
    $('scope-one').setAttribute('aria-pressed', String(scope === 'one'));
    renderEvents();
  }

  function setPaused(paused) {
    state.paused = paused;
    const btn = $('pause');
    btn.setAttribute('aria-pressed', String(paused));
    btn.textContent = paused ? 'Resume' : 'Pause';
    if (paused) {
      if (state.timer) clearTimeout(state.timer);
      state.timer = 0;
      setConn('paused', 'Paused');
    } else {
      setConn('pending', 'Reconnecting');
      if (!state.timer) tick();
    }
  }

  function init() {
    state.selected = readHash();
    $('filter').addEventListener('input', (e) => {
      state.filter = e.target.value;
      renderAgents();
    });
    $('sort').addEventListener('change', (e) => {
      state.sort = e.target.value;
      renderAgents();
    });
    $('scope-all').addEventListener('click', () => setScope('all'));
    $('scope-one').addEventListener('click', () => setScope('one'));
    $('flows-by-bytes').addEventListener('click', () => setFlowsBy('bytes'));
    $('flows-by-packets').addEventListener('click', () => setFlowsBy('packets'));
    $('pause').addEventListener('click', () => setPaused(!state.paused));
    let pending = 0;
    window.addEventListener('resize', () => {
      if (pending) return;
      pending = requestAnimationFrame(() => {
        pending = 0;
        if (state.nodes.length) render();
      });
    });
    tick();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
