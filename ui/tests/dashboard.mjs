#!/usr/bin/env node
// Headless Chromium test of the xdt dashboard (ui/).
//
//   node ui/tests/dashboard.mjs [BASE_URL] [--agents N] [--screenshot PATH]
//   node ui/tests/dashboard.mjs --serve [--agents N]    (synthetic central only, for working on ui/)
//
// Without BASE_URL it serves ui/, central's /catalogue.json and a synthetic /metrics.json (changing every second, one
// agent id set to an XSS payload, some agents steering packets, one with an XSS HTTP path) on 127.0.0.1 with an ephemeral port, and runs the checks
// with 1 and with 50 agents (or only with N when --agents is given). With BASE_URL it checks
// a running xdt-central instead. Exit status 0 when every check passes, 1 otherwise.
//
// Needs Debian's chromium (/usr/bin/chromium) and `npm ci --prefix ui/tests`.

import { execFileSync } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const UI_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const XSS_ID = '<img src=x onerror=alert(1)>';
const XSS_HOST = '<script>alert(2)</script>';
const XSS_LABEL = '<svg onload=alert(3)>';
const XSS_PATH = '/<img src=x onerror=alert(1)>';
const XSS_REINJECT = 'host via <iframe srcdoc=x>';
const STEER_LOSSES = ['reinject_dropped', 'rx_dropped', 'rx_ring_full', 'rx_fill_ring_empty', 'tx_invalid_descs'];
const SCENARIO_TIMEOUT_MS = 90_000;
const MAX_EVENTS_SHOWN = 200;

// ---------- arguments ----------

function usage(msg) {
  if (msg) console.error('dashboard.mjs: ' + msg);
  console.error('usage: node ui/tests/dashboard.mjs [BASE_URL] [--agents N] [--screenshot PATH]');
  console.error('       node ui/tests/dashboard.mjs --serve [--agents N]');
  process.exit(2);
}

const opts = { base: null, agents: null, screenshot: null, serve: false };
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--agents') {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > 1000) usage('--agents needs a number from 1 to 1000');
      opts.agents = n;
    } else if (a === '--screenshot') {
      if (!argv[i + 1]) usage('--screenshot needs a path');
      opts.screenshot = path.resolve(argv[++i]);
    } else if (a === '--serve') {
      opts.serve = true;
    } else if (a === '-h' || a === '--help') {
      usage();
    } else if (!a.startsWith('-') && !opts.base) {
      try {
        opts.base = new URL(a).href;
      } catch {
        usage('not a URL: ' + a);
      }
    } else {
      usage('unknown argument: ' + a);
    }
  }
}

// ---------- synthetic central ----------

// Deterministic noise in [0, 1) from integers, so every request for the same second agrees.
function noise(...xs) {
  let h = 2166136261;
  for (const x of xs) h = Math.imul(h ^ (x | 0), 16777619) ^ (h >>> 13);
  h = Math.imul(h ^ (h >>> 16), 2246822507);
  h = Math.imul(h ^ (h >>> 13), 3266489909);
  return ((h ^ (h >>> 16)) >>> 0) / 4294967296;
}

const LABELS = ['web', 'dns', 'ssh', 'blocked', 'metrics', 'ntp', 'db', XSS_LABEL];

function agentId(i) {
  return i === 0 ? XSS_ID : 'node-' + String(i + 1).padStart(2, '0');
}

// One agent's view at second `sec`; `start` is the server's start second (counters grow from it).
function syntheticNode(i, sec, start) {
  const base = 40 + ((i * 37) % 260);
  const avgSize = 300 + ((i * 53) % 900);
  const pps = (s) => Math.max(0, base * (1 + 0.45 * Math.sin(s / 14 + i)) + base * 0.35 * (noise(s, i, 1) - 0.5));
  const up = sec - start;
  const connected = i % 17 !== 5;
  const sparse = i % 13 === 7; // an old agent that reports only the seed's fields
  const lossy = i % 11 === 3;
  // Agents that steer packets through AF_XDP: the first one (its re-injection target an XSS
  // string, its RX ring overflowing), and every fourth, every other one of those losing.
  const steers = i === 0 || i % 4 === 1;
  const steerLossy = i === 0 || i % 8 === 1;
  const id = agentId(i);
  const labels = LABELS.filter((_, k) => k === 0 || noise(i, k, 2) < 0.6 || (i === 0 && k === LABELS.length - 1));
  const totalPackets = Math.round(base * (3600 + up));
  const labelCounts = labels.map((label, k) => {
    const packets = Math.round(totalPackets * (0.5 / (k + 1)) * (0.6 + noise(i, k, 3)));
    return { label, packets, bytes: packets * Math.round(avgSize * (0.5 + noise(i, k, 4))) };
  });
  const recent = [];
  for (let k = 0; k < 24; k++) {
    const s = sec - Math.floor(k * 1.5);
    const proto = [6, 6, 6, 17, 17, 1][Math.floor(noise(i, s, k, 5) * 6)];
    const label = labels[Math.floor(noise(i, s, k, 6) * labels.length)];
    const v6 = noise(i, s, k, 7) < 0.15;
    recent.push({
      timestamp_unix_ns: (s * 1000 + Math.floor(noise(i, s, k, 8) * 1000)) * 1e6,
      label,
      rule: LABELS.indexOf(label) + 1,
      action: label === 'blocked' ? 'drop' : 'sample',
      protocol: proto,
      src: v6 ? 'fd00:10::' + (k + 2).toString(16) : '10.0.' + (i % 250) + '.' + (k + 2),
      dst: v6 ? 'fd00:10::1' : '10.0.' + (i % 250) + '.1',
      src_port: proto === 1 ? 0 : 32768 + Math.floor(noise(i, s, k, 9) * 28000),
      dst_port: proto === 1 ? 0 : [80, 443, 53, 22, 8081][Math.floor(noise(i, s, k, 10) * 5)],
      ip_len: 60 + Math.floor(noise(i, s, k, 11) * 1400),
      payload_len: Math.floor(noise(i, s, k, 12) * 1300),
      tcp_flags: proto === 6 ? [2, 18, 16, 24, 17][Math.floor(noise(i, s, k, 13) * 5)] : 0,
      rx_queue: k % 2,
    });
    if (steers && !sparse && k % 3 === 0) {
      // Steered packets: an HTTP request (the first agent's newest has an XSS path) or a DNS query.
      const e = recent[recent.length - 1];
      const dns = k % 6 === 3;
      Object.assign(e, {
        label: 'inspect', rule: 9, action: 'steer', protocol: dns ? 17 : 6, dst_port: dns ? 53 : 80,
        tcp_flags: dns ? 0 : 24,
        inspection: {
          frame_len: e.ip_len + 14,
          agent_latency_ns: Math.round(8000 + noise(i, s, k, 19) * 90000),
          reinjected: !(i === 0 && dns),
          http: dns ? null : { method: k % 12 === 6 ? 'POST' : 'GET', path: i === 0 && k === 0 ? XSS_PATH : '/api/v1/items/' + k, host: k % 2 ? null : 'shop.example' },
          dns: dns ? { name: 'svc-' + k + '.example.com', qtype: k % 4 ? 28 : 1 } : null,
        },
      });
      // The first agent's XSS request is the newest event of the whole fleet.
      if (i === 0 && k === 0) e.timestamp_unix_ns = (sec * 1000 + 999) * 1e6;
    }
  }
  const node = {
    agent_id: id,
    total_events: 100 * i + 5 * up,
    label_counts: labelCounts,
    recent_events: recent,
  };
  if (sparse) return node;
  const last = connected ? sec : sec - 40 - i;
  const history = [];
  for (let s = sec - 119; s <= sec; s++) {
    if (s > last) break;
    const p = pps(s);
    const size = avgSize * (1 + 0.35 * Math.sin(s / 23 + 2 * i));
    history.push([s, +p.toFixed(2), +(p * size * 8).toFixed(1)]);
  }
  const payload = [];
  for (let s = sec - 119; s <= Math.min(sec, last); s++) {
    const n = Math.floor(noise(i, s, 14) * 4);
    for (let k = 0; k < n; k++) payload.push([s + noise(i, s, k, 15), Math.floor(64 + noise(i, s, k, 16) * noise(i, s, k, 17) * 1400)]);
  }
  Object.assign(node, {
    hostname: i === 0 ? XSS_HOST : id + '.lab.example',
    interface: i % 3 === 2 ? 'ens3' : 'eth0',
    connected,
    last_seen_unix: last,
    counters: {
      total_packets: totalPackets,
      total_bytes: totalPackets * avgSize,
      tcp_packets: Math.round(totalPackets * 0.58),
      udp_packets: Math.round(totalPackets * 0.31),
      icmp_packets: Math.round(totalPackets * 0.04),
      other_packets: totalPackets - Math.round(totalPackets * 0.58) - Math.round(totalPackets * 0.31) - Math.round(totalPackets * 0.04),
      ipv4_packets: Math.round(totalPackets * 0.86),
      ipv6_packets: totalPackets - Math.round(totalPackets * 0.86),
      lost_events: lossy ? 12 + up * 3 : 0,
      dropped_packets: labels.includes('blocked') ? labelCounts[labels.indexOf('blocked')].packets : 0,
    },
    rates: connected ? { packets_per_second: history.length ? history[history.length - 1][1] : 0, bits_per_second: history.length ? history[history.length - 1][2] : 0 } : { packets_per_second: 0, bits_per_second: 0 },
    rate_history: history,
    payload_history: payload,
    agent: { dropped_events: lossy ? 4 : 0, reconnects: connected ? 0 : 3, unacked_batches: connected ? (i % 3) : 7, probe_ns_per_packet: 18 + noise(i, 18) * 10 },
    lost_events: lossy ? 12 + up * 3 : 0,
  });
  if (i % 3 === 0) {
    node.flows = syntheticFlows(i);
    node.agent.flows = { active: 40 + i, records: 1000 + i, state_full: i === 0 ? 2 : 0, dropped_records: 0, ipfix_messages: 50, ipfix_records: 1000 + i, ipfix_send_failures: 0 };
  }
  if (steers) {
    const { steering, rates } = syntheticSteering(i, up, steerLossy, totalPackets, avgSize, connected ? pps(sec) : 0);
    node.agent.steering = steering;
    node.steering_rates = rates;
  }
  return node;
}

// The top talkers of an agent (`flows` in /metrics.json, as central's FlowSummary writes it),
// the same every second so the checks can compare exact cells: 14 flows, flow k with
// 10 * (k + 1) packets and 1000 * (14 - k) bytes, so ranking by packets reverses the order by
// bytes. The first agent's largest flow has the XSS label and a handshake of 180 µs.
const FLOW_COUNT = 14;
function syntheticFlows(i) {
  const flows = [];
  for (let k = 0; k < FLOW_COUNT; k++) {
    const v6 = k % 4 === 3;
    flows.push({
      src: v6 ? 'fd00:20::' + (k + 2).toString(16) : '10.1.' + (i % 250) + '.' + (k + 2),
      dst: v6 ? 'fd00:20::1' : '10.1.' + (i % 250) + '.1',
      src_port: 40000 + k, dst_port: k % 5 === 4 ? 53 : 443, protocol: k % 5 === 4 ? 17 : 6, vlans: [k === 1 ? 100 : 0, 0],
      packets: 10 * (k + 1), bytes: 1000 * (FLOW_COUNT - k),
      label: k === 0 && i === 0 ? XSS_LABEL : k % 3 === 2 ? null : 'web',
      handshake_ns: k % 5 === 4 ? null : 180_000 + 1000 * k,
      tcp_flags: k % 5 === 4 ? 0 : 27, last_seen_unix_ns: 1_700_000_000_000_000_000, end: ['end', 'idle', 'active'][k % 3],
    });
  }
  const sum = (list, f) => list.reduce((a, x) => a + x[f], 0);
  const total = { packets: sum(flows, 'packets'), bytes: sum(flows, 'bytes') };
  const topBytes = flows.slice().sort((a, b) => b.bytes - a.bytes).slice(0, 10);
  const topPackets = flows.slice().sort((a, b) => b.packets - a.packets).slice(0, 10);
  const rest = (top) => ({ packets: total.packets - sum(top, 'packets'), bytes: total.bytes - sum(top, 'bytes') });
  return {
    window_seconds: 60, records_per_second: 3.5, total, records: 210, flows_kept: FLOW_COUNT, max_flows_kept: 1024,
    top_bytes: topBytes, other_by_bytes: rest(topBytes), top_packets: topPackets, other_by_packets: rest(topPackets),
    received_records: 5000, untracked_records: i === 0 ? 7 : 0, evicted_flows: 0,
  };
}

// The steering block of an agent (`agent.steering` and `steering_rates`), a fifth of its packets
// steered. The first agent's RX ring overflows (1 frame/s); the other lossy ones fail to re-inject.
function syntheticSteering(i, up, lossy, totalPackets, avgSize, pps) {
  const received = Math.round(totalPackets / 5);
  const losses = {
    reinject_dropped: lossy && i !== 0 ? 2 + up : 0,
    rx_dropped: 0,
    rx_ring_full: i === 0 ? 5 + up : 0,
    rx_fill_ring_empty: 0,
    tx_invalid_descs: lossy && i !== 0 ? 1 : 0,
  };
  const rates = {
    received_packets_per_second: pps / 5,
    received_bits_per_second: (pps / 5) * avgSize * 8,
    reinjected_packets_per_second: Math.max(0, pps / 5 - (lossy ? 1 : 0)),
  };
  for (const f of STEER_LOSSES) rates[f + '_per_second'] = f === 'rx_ring_full' ? (i === 0 ? 1 : 0) : f === 'reinject_dropped' && losses[f] ? 1 : 0;
  return {
    rates,
    steering: Object.assign({
      mode: i % 8 === 5 ? 'copy' : 'zerocopy',
      reinject: i === 0 ? XSS_REINJECT : i % 2 ? 'host via xdt5r' : 'egress eth2',
      sockets: 4,
      received_packets: received,
      received_bytes: received * avgSize,
      reinjected_packets: received - losses.reinject_dropped - losses.tx_invalid_descs,
    }, losses),
  };
}

function syntheticMetrics(agents, start) {
  const sec = Math.floor(Date.now() / 1000);
  const nodes = [];
  for (let i = 0; i < agents; i++) nodes.push(syntheticNode(i, sec, start));
  return { total_events: nodes.reduce((a, n) => a + n.total_events, 0), nodes };
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon' };

// The catalogue the real central serves (crates/xdt-central/src/catalogue.rs), printed by the
// crate's `catalogue` example, or read from the file XDT_CATALOGUE names.
function centralCatalogue() {
  if (process.env.XDT_CATALOGUE) return fs.readFileSync(process.env.XDT_CATALOGUE);
  return execFileSync('cargo', ['run', '--quiet', '-p', 'xdt-central', '--example', 'catalogue'], {
    cwd: path.resolve(UI_DIR, '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 600_000,
  });
}

function startServer(agents) {
  const start = Math.floor(Date.now() / 1000);
  const server = { down: false, requests: 0 };
  const catalogue = centralCatalogue();
  const srv = http.createServer((req, res) => {
    server.requests += 1;
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/catalogue.json') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(catalogue);
      return;
    }
    if (url.pathname === '/metrics.json') {
      if (server.down) {
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.end('central is down (test)');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(syntheticMetrics(agents, start)));
      return;
    }
    // Like xdt-central: only the files directly in ui/.
    const name = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
    const file = path.join(UI_DIR, name);
    if (!/^[A-Za-z0-9._-]+$/.test(name) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(name)] || 'application/octet-stream' });
    res.end(fs.readFileSync(file));
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      server.url = 'http://127.0.0.1:' + srv.address().port + '/';
      server.metrics = () => syntheticMetrics(agents, start);
      server.close = () => new Promise((r) => { srv.closeAllConnections(); srv.close(() => r()); });
      resolve(server);
    });
  });
}

// ---------- checks ----------

let passed = 0;
let failed = 0;

function check(name, ok, detail) {
  if (ok) {
    passed += 1;
    console.log('ok   ' + name);
  } else {
    failed += 1;
    console.log('FAIL ' + name + (detail ? ': ' + detail : ''));
  }
  return ok;
}

// The dashboard's byte format (ui/app.js fmtBytes), for expected cells.
function fmtBytesLikeUi(v) {
  for (const [f, p] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
    if (Math.abs(v) >= f) return (Math.abs(v / f) >= 100 ? (v / f).toFixed(0) : (v / f).toFixed(1)) + ' ' + p + 'B';
  }
  return (Number.isInteger(v) || Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' B';
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(page, fn, arg, timeout = 8000) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    return true;
  } catch {
    return false;
  }
}

// Non-transparent pixels and pixels in the series colour of a canvas, read back in the page.
function canvasInfo(page, selector) {
  return page.evaluate((sel) => {
    const c = document.querySelector(sel);
    if (!c) return null;
    const ctx = c.getContext('2d');
    const { data } = ctx.getImageData(0, 0, c.width, c.height);
    let inked = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked += 1;
    return {
      width: c.width, height: c.height, cssWidth: c.clientWidth, cssHeight: c.clientHeight,
      inked, total: c.width * c.height, points: Number(c.dataset.points || 0), dpr: window.devicePixelRatio,
    };
  }, selector);
}

async function scenario({ label, base, agents, synthetic, server, screenshot, dpr }) {
  const prefix = '[' + label + '] ';
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdt-ui-test-'));
  let context;
  const consoleErrors = [];
  const dialogs = [];
  const foreign = [];
  let expectNetworkErrors = false;
  const origin = new URL(base).origin;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1440, height: 900 },
      deviceScaleFactor: dpr,
      timeout: 30_000,
    });
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(10_000);
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      if (expectNetworkErrors && /Failed to load resource|metrics\.json/.test(m.text())) return;
      consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));
    page.on('dialog', (d) => {
      dialogs.push(d.type() + ': ' + d.message());
      d.dismiss().catch(() => {});
    });
    page.on('request', (r) => {
      const u = r.url();
      if (!u.startsWith('data:') && new URL(u).origin !== origin) foreign.push(u);
    });

    let resp = null;
    try {
      resp = await page.goto(base, { waitUntil: 'load' });
    } catch (err) {
      check(prefix + 'page loads', false, 'cannot load ' + base + ': ' + String(err.message).split('\n')[0]);
      return;
    }
    if (!check(prefix + 'page loads', resp && resp.ok(), resp ? 'HTTP ' + resp.status() : 'no response')) return;
    const rendered = await waitFor(page, () => Number(document.body.dataset.renders || 0) >= 1);
    if (!check(prefix + 'first /metrics.json rendered', rendered, 'state=' + (await page.evaluate(() => document.body.dataset.state)))) return;
    check(prefix + 'state is live', (await page.getAttribute('body', 'data-state')) === 'live');

    const expected = synthetic ? server.metrics() : await (await fetch(new URL('metrics.json', base))).json();
    const ids = expected.nodes.map((n) => String(n.agent_id));

    // Agent list: one row per agent, ids as literal text.
    const rowIds = await page.$$eval('#agent-list .agent__id', (els) => els.map((e) => e.textContent));
    check(prefix + 'one agent row per agent', rowIds.length === ids.length, rowIds.length + ' rows for ' + ids.length + ' agents');
    if (agents) check(prefix + 'agent count is ' + agents, rowIds.length === agents, rowIds.length + ' rows');
    const missing = ids.filter((id) => !rowIds.includes(id));
    check(prefix + 'every agent id shown as text', missing.length === 0, 'missing: ' + JSON.stringify(missing.slice(0, 5)));

    // Nothing agent-supplied became markup.
    const markup = await page.evaluate(() => ({
      imgs: document.querySelectorAll('img').length,
      scripts: document.querySelectorAll('script').length,
      svgs: document.querySelectorAll('svg').length,
    }));
    check(prefix + 'no injected elements', markup.imgs === 0 && markup.svgs === 0 && markup.scripts === 2, JSON.stringify(markup));
    if (synthetic) {
      check(prefix + 'XSS agent id shown literally in the agent list', rowIds.includes(XSS_ID));
      await page.locator('#agent-list .agent', { hasText: XSS_ID }).first().click();
      await waitFor(page, (id) => document.getElementById('d-id').textContent === id, XSS_ID, 3000);
      const d = await page.evaluate(() => ({ id: document.getElementById('d-id').textContent, host: document.getElementById('d-host').textContent }));
      check(prefix + 'XSS agent id shown literally as the detail title', d.id === XSS_ID, JSON.stringify(d.id));
      check(prefix + 'XSS hostname shown literally', d.host === XSS_HOST, JSON.stringify(d.host));
      const labels = await page.$$eval('#d-labels .bar__name', (els) => els.map((e) => e.textContent));
      check(prefix + 'XSS label shown literally in the label bars', labels.includes(XSS_LABEL), JSON.stringify(labels));

      // AF_XDP steering of this agent: mode, target, sockets, throughput and every loss
      // counter, the one that grows highlighted with its current rate.
      const steer = await page.evaluate(() => ({
        hidden: document.getElementById('d-steer-card').hidden,
        mode: document.getElementById('d-steer-mode').textContent,
        reinject: document.getElementById('d-steer-reinject').textContent,
        sockets: document.getElementById('d-steer-sockets').textContent,
        flow: Array.from(document.querySelectorAll('#d-steer-flow .flow__rate'), (e) => e.textContent),
        losses: Array.from(document.querySelectorAll('#d-steer-loss .loss'), (e) => ({
          label: e.querySelector('.loss__label').textContent,
          value: e.querySelector('.loss__value').firstChild.textContent,
          nonzero: e.matches('.loss--loss.loss--nonzero'),
          background: getComputedStyle(e).backgroundColor,
          now: e.querySelector('.loss__now')?.textContent || '',
        })),
        tile: !document.getElementById('t-steer-tile').hidden,
        tileAlert: document.getElementById('t-steer-tile').classList.contains('tile--alert'),
      }));
      check(prefix + 'steering card shown for a steering agent', !steer.hidden);
      check(prefix + 'steering card shows mode, sockets and throughput', steer.mode === 'zero-copy' && steer.sockets.startsWith('4') && steer.flow.length === 3 && steer.flow.every((f) => /pkt\/s|bit\/s/.test(f)), JSON.stringify(steer));
      check(prefix + 'XSS re-injection target shown literally', steer.reinject === XSS_REINJECT, JSON.stringify(steer.reinject));
      const byLabel = Object.fromEntries(steer.losses.map((l) => [l.label, l]));
      check(prefix + 'steering card shows every loss counter', ['Re-inject dropped', 'RX dropped', 'RX ring full', 'Fill ring empty', 'TX invalid descriptors'].every((l) => byLabel[l]) && steer.losses.length === 5, JSON.stringify(steer.losses.map((l) => l.label)));
      const ring = byLabel['RX ring full'] || {};
      const zeros = steer.losses.filter((l) => l.label !== 'RX ring full');
      check(prefix + 'a non-zero steering loss is highlighted with its rate', ring.nonzero === true && Number(ring.value.replace(/,/g, '')) > 0 && ring.now === '1.0/s now' && zeros.every((l) => l.background !== ring.background), JSON.stringify(ring));
      check(prefix + 'zero steering losses are not highlighted', zeros.every((l) => !l.nonzero && l.value === '0' && !l.now), JSON.stringify(steer.losses));
      check(prefix + 'fleet tile flags steering losses', steer.tile && steer.tileAlert, JSON.stringify({ tile: steer.tile, alert: steer.tileAlert }));

      // Its steered events, with what the agent read of them; the XSS path stays text.
      await page.click('#scope-one');
      const inspected = await page.$$eval('#events-body tr.inspection', (rows) => rows.map((r) => ({
        text: r.textContent,
        main: r.querySelector('.inspection__main')?.textContent,
        method: r.querySelector('.inspection__method')?.textContent || '',
        prevAction: r.previousElementSibling?.cells[3]?.textContent,
      })));
      await page.click('#scope-all');
      const xss = inspected.find((r) => r.main === XSS_PATH);
      check(prefix + 'HTTP request of a steered event shown with its XSS path as text', Boolean(xss) && xss.method === 'GET' && xss.text.includes('Host shop.example'), JSON.stringify(xss || inspected.slice(0, 2)));
      check(prefix + 'steered event shows frame length and agent latency', Boolean(xss) && /frame [\d,]+ B/.test(xss.text) && /agent latency [\d.]+ (µs|ms|ns)/.test(xss.text) && xss.text.includes('re-injected') && xss.prevAction === 'steer', JSON.stringify(xss || inspected.slice(0, 2)));
      const dns = inspected.find((r) => r.text.includes('DNS') && r.main === 'svc-3.example.com');
      check(prefix + 'DNS query of a steered event shown with its type', Boolean(dns) && dns.text.includes('AAAA'), JSON.stringify(dns || inspected.slice(0, 2)));
      check(prefix + 'a steered packet that was not re-injected is flagged', Boolean(dns) && dns.text.includes('not re-injected'), dns ? dns.text : '');
      const stillText = await page.evaluate(() => document.querySelectorAll('img, svg, iframe').length);
      check(prefix + 'no element injected by the inspections or the steering card', stillText === 0, stillText + ' elements');

      // Its top flows: ten rows ranked by bytes and the rest in one, label and handshake as
      // text, then ranked by packets; the agent's full flow state in the loss panel.
      const flowRows = () => page.evaluate(() => ({
        hidden: document.getElementById('d-flows-card').hidden,
        rows: Array.from(document.querySelectorAll('#d-flows-body tr'), (r) => Array.from(r.cells, (c) => c.textContent)),
        window: document.getElementById('d-flows-window').textContent,
        note: document.getElementById('d-flows-note').textContent,
      }));
      const want = syntheticFlows(0);
      const byBytes = await flowRows();
      check(prefix + 'top-flows card shown for an agent that sends flows', !byBytes.hidden);
      check(prefix + 'top flows: ten ranked rows and the rest', byBytes.rows.length === 11 && byBytes.rows[10][0] === 'Other flows', JSON.stringify(byBytes.rows.map((r) => r[0])));
      const first = byBytes.rows[0] || [];
      check(prefix + 'top flow by bytes with its endpoints, XSS label as text and handshake',
        first[0] === '1' && first[1] === 'TCP' && first[2] === '10.1.0.2:40000' && first[3] === '10.1.0.1:443' && first[4] === XSS_LABEL &&
        first[5] === '10' && first[6] === '14.0 kB' && first[8] === '180 µs' && first[9] === 'FIN SYN PSH ACK' && first[10] === 'FIN/RST',
        JSON.stringify(first));
      const fourth = byBytes.rows[3] || [];
      check(prefix + 'an IPv6 flow, a flow without label and a UDP flow without handshake',
        fourth[2] === '[fd00:20::5]:40003' && byBytes.rows[2][4] === '-' && byBytes.rows[4][1] === 'UDP' && byBytes.rows[4][8] === '-',
        JSON.stringify(byBytes.rows.slice(2, 5)));
      const other = byBytes.rows[10] || [];
      check(prefix + 'Other flows row is the rest of the minute', other[1] === String(want.other_by_bytes.packets) && other[2] === fmtBytesLikeUi(want.other_by_bytes.bytes), JSON.stringify(other) + ' want ' + JSON.stringify(want.other_by_bytes));
      check(prefix + 'top flows say their window, rate and bound', byBytes.window.includes('last 60 s') && byBytes.window.includes('3.5 flow records/s') && byBytes.note.includes('14 of at most 1,024 flows kept') && byBytes.note.includes('7 records of flows not kept'), byBytes.window + ' | ' + byBytes.note);
      await page.click('#flows-by-packets');
      const byPackets = await flowRows();
      check(prefix + 'ranked by packets on request', (byPackets.rows[0] || [])[2] === want.top_packets[0].src + ':' + want.top_packets[0].src_port && (byPackets.rows[0] || [])[5] === '140', JSON.stringify(byPackets.rows[0]));
      await page.click('#flows-by-bytes');
      const flowLoss = await page.evaluate(() => Array.from(document.querySelectorAll('#d-loss .loss'), (e) => ({
        label: e.querySelector('.loss__label').textContent, value: e.querySelector('.loss__value').textContent, nonzero: e.matches('.loss--nonzero'),
        warn: e.matches('.loss--warn'),
      })).find((l) => l.label === 'Flow state full'));
      // Flows the agent's full state cut into pieces: a warning (amber), not a loss.
      check(prefix + 'the agent\'s full flow state is in the loss panel as a warning', Boolean(flowLoss) && flowLoss.value === '2' && flowLoss.nonzero && flowLoss.warn, JSON.stringify(flowLoss));
      const injected = await page.evaluate(() => document.querySelectorAll('img, svg, iframe').length);
      check(prefix + 'no element injected by the top-flows table', injected === 0, injected + ' elements');
    }

    // Charts of the selected agent.
    const sel = await page.evaluate(() => document.getElementById('d-id').textContent);
    const node = expected.nodes.find((n) => String(n.agent_id) === sel);
    if (!expected.nodes.length) {
      console.log('note ' + prefix + 'the central has no agents: chart checks skipped');
      const waiting = await page.isVisible('#detail-empty');
      check(prefix + 'says it is waiting for agents', waiting);
    }
    for (const [name, id, hasData] of expected.nodes.length ? [
      ['packet-rate chart', '#c-rate', node && Array.isArray(node.rate_history) && node.rate_history.length > 0],
      ['payload chart', '#c-payload', node && ((node.payload_history || []).length > 0 || (node.recent_events || []).length > 0)],
    ] : []) {
      const info = await canvasInfo(page, id);
      if (!check(prefix + name + ' exists', info !== null)) continue;
      check(prefix + name + ' drawn (pixels not blank)', info.inked > info.total * 0.01, info.inked + ' of ' + info.total + ' pixels inked');
      check(prefix + name + ' sized for devicePixelRatio ' + info.dpr,
        Math.abs(info.width - Math.round(info.cssWidth * info.dpr)) <= 1 && Math.abs(info.height - Math.round(info.cssHeight * info.dpr)) <= 1,
        `${info.width}x${info.height} backing store for ${info.cssWidth}x${info.cssHeight} CSS px`);
      if (hasData) check(prefix + name + ' plots the data', info.points > 0, 'points=' + info.points);
      else console.log('note ' + prefix + name + ': the selected agent has no data for it');
    }
    const sparks = await page.$$eval('#agent-list canvas.spark', (cs) => cs.filter((c) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true;
      return false;
    }).length);
    if (expected.nodes.length) check(prefix + 'agent sparklines drawn', sparks > 0, sparks + ' drawn');
    if (node) {
      const steers = Boolean(node.agent && node.agent.steering);
      const shown = await page.evaluate(() => !document.getElementById('d-steer-card').hidden);
      check(prefix + 'steering card shown exactly when the agent steers', shown === steers, 'agent steers: ' + steers + ', card shown: ' + shown);
      const hasFlows = Boolean(node.flows);
      const flowsShown = await page.evaluate(() => !document.getElementById('d-flows-card').hidden);
      check(prefix + 'top-flows card shown exactly when the agent sends flows', flowsShown === hasFlows, 'agent sends flows: ' + hasFlows + ', card shown: ' + flowsShown);
    }

    // Events table: rows, bounded, newest first.
    const ev = await page.evaluate(() => {
      const rows = Array.from(document.querySelectorAll('#events-body tr.event'));
      return { n: rows.length, times: rows.map((r) => r.cells[0].textContent), labels: rows.map((r) => r.cells[2].textContent), agents: rows.map((r) => r.cells[1].textContent) };
    });
    const totalEvents = expected.nodes.reduce((a, n) => a + (n.recent_events || []).length, 0);
    if (synthetic || totalEvents > 0) check(prefix + 'events table has rows', ev.n > 0, ev.n + ' rows');
    else console.log('note ' + prefix + 'the central has no recent events: table is empty');
    check(prefix + 'events table bounded', ev.n <= MAX_EVENTS_SHOWN, ev.n + ' rows');
    const sorted = ev.times.every((t, i) => i === 0 || ev.times[i - 1] >= t);
    check(prefix + 'events newest first', sorted, ev.times.slice(0, 5).join(', '));
    if (synthetic) {
      check(prefix + 'XSS label and agent shown literally in the events table',
        ev.labels.includes(XSS_LABEL) || ev.agents.includes(XSS_ID), 'not found in ' + ev.n + ' rows');
    }

    // Refresh: new data is shown every second.
    const before = await page.evaluate(() => ({ renders: Number(document.body.dataset.renders), events: document.getElementById('t-events').textContent, time: document.querySelector('#events-body tr.event td')?.textContent }));
    await sleep(2500);
    const after = await page.evaluate(() => ({ renders: Number(document.body.dataset.renders), events: document.getElementById('t-events').textContent, time: document.querySelector('#events-body tr.event td')?.textContent }));
    check(prefix + 'refreshes every second', after.renders - before.renders >= 2, `renders ${before.renders} -> ${after.renders}`);
    if (synthetic) {
      check(prefix + 'changed data is shown after 2.5 s', after.events !== before.events, `total events ${before.events} -> ${after.events}`);
      check(prefix + 'newest event changes', after.time !== before.time, `${before.time} -> ${after.time}`);
    }

    // Selecting another agent shows it.
    if (rowIds.length > 1) {
      const target = rowIds.includes('node-02') ? 'node-02' : rowIds[1];
      await page.locator('#agent-list .agent__id', { hasText: target }).first().click();
      const ok = await waitFor(page, (id) => document.getElementById('d-id').textContent === id, target, 3000);
      check(prefix + 'clicking an agent selects it', ok, 'wanted ' + target);
      check(prefix + 'selection kept in the URL', decodeURIComponent(new URL(page.url()).hash) === '#agent=' + target, page.url());
      await page.click('#scope-one');
      const scoped = await page.$$eval('#events-body tr.event', (rows) => rows.map((r) => r.cells[1].textContent));
      check(prefix + '"Selected agent" scope shows only its events', scoped.length > 0 ? scoped.every((a) => a === target) : !synthetic, scoped.length + ' rows, agents: ' + [...new Set(scoped)].slice(0, 3).join(', '));
      await page.click('#scope-all');
    }
    if (synthetic && agents >= 20) {
      // node-08 sends only the seed's fields: the page shows '-' and still draws its events.
      await page.locator('#agent-list .agent__id', { hasText: 'node-08' }).first().click();
      await waitFor(page, () => document.getElementById('d-id').textContent === 'node-08', null, 3000);
      const sparse = await page.evaluate(() => ({
        host: document.getElementById('d-host').textContent,
        pps: document.getElementById('d-pps').textContent,
        state: document.getElementById('d-state').textContent,
        payload: Number(document.getElementById('c-payload').dataset.points || 0),
        steerHidden: document.getElementById('d-steer-card').hidden,
      }));
      check(prefix + 'an agent with only the seed\'s fields shows "-"', sparse.host === '-' && sparse.pps === '-' && sparse.state === 'Unknown', JSON.stringify(sparse));
      check(prefix + 'its payload chart falls back to its recent events', sparse.payload > 0, 'points=' + sparse.payload);
      check(prefix + 'no steering card for an agent that does not steer', sparse.steerHidden, JSON.stringify(sparse));
      const badges = await page.evaluate(() => Object.fromEntries(['node-02', 'node-04'].map((id) => {
        const row = Array.from(document.querySelectorAll('#agent-list .agent')).find((r) => r.querySelector('.agent__id').textContent === id);
        const badge = row && row.querySelector('.agent__loss--steer');
        return [id, badge ? !badge.hidden : null];
      })));
      check(prefix + 'an agent losing steered packets is flagged in the list', badges['node-02'] === true && badges['node-04'] === false, JSON.stringify(badges));
      await page.fill('#filter', 'node-1');
      const n = await page.$$eval('#agent-list .agent', (r) => r.length);
      check(prefix + 'filter narrows the agent list', n > 0 && n < rowIds.length, n + ' rows');
      await page.fill('#filter', '');
      await page.locator('#agent-list .agent__id', { hasText: 'node-02' }).first().click();
      await waitFor(page, () => document.getElementById('d-id').textContent === 'node-02', null, 3000);
    }

    // Central goes away: a visible disconnected state, then recovery.
    if (synthetic) {
      expectNetworkErrors = true;
      server.down = true;
      const down = await waitFor(page, () => document.body.dataset.state === 'down' && !document.getElementById('banner').hidden, null, 5000);
      check(prefix + 'shows "disconnected" when /metrics.json fails', down, 'state=' + (await page.getAttribute('body', 'data-state')));
      const pill = await page.textContent('#conn');
      check(prefix + 'connection pill says Disconnected', pill === 'Disconnected', pill);
      server.down = false;
      const up = await waitFor(page, () => document.body.dataset.state === 'live' && document.getElementById('banner').hidden, null, 5000);
      check(prefix + 'recovers when /metrics.json answers again', up);
      await sleep(300);
      expectNetworkErrors = false;
    }

    // Pointing at the rate chart shows a read-out of the nearest sample.
    {
      await page.evaluate(() => window.scrollTo(0, 0));
      await sleep(100);
      const box = await page.locator('#c-rate').boundingBox();
      const plain = await canvasInfo(page, '#c-rate');
      await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.5);
      await sleep(100);
      const hovered = await canvasInfo(page, '#c-rate');
      check(prefix + 'hovering the rate chart draws a read-out', plain.points === 0 || hovered.inked > plain.inked, `${plain.inked} -> ${hovered.inked} inked pixels`);
    }

    if (screenshot) {
      await page.evaluate(() => document.activeElement && document.activeElement.blur());
      fs.mkdirSync(path.dirname(screenshot), { recursive: true });
      await page.screenshot({ path: screenshot, fullPage: true });
      console.log('note ' + prefix + 'screenshot written to ' + screenshot);
    }

    check(prefix + 'no console errors or page errors', consoleErrors.length === 0, consoleErrors.slice(0, 5).join(' | '));
    check(prefix + 'no dialog fired', dialogs.length === 0, dialogs.join(' | '));
    check(prefix + 'nothing loaded from another origin', foreign.length === 0, foreign.slice(0, 5).join(' '));
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

async function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(what + ' took longer than ' + ms / 1000 + ' s')), ms); });
  try {
    return await Promise.race([promise, t]);
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  if (opts.serve) {
    const server = await startServer(opts.agents || 50);
    console.log('serving ui/ and a synthetic /metrics.json at ' + server.url + ' (Ctrl-C stops)');
    return;
  }
  if (!fs.existsSync(CHROMIUM)) {
    console.error(`dashboard.mjs: ${CHROMIUM} not found; install Debian's chromium (apt-get install -y chromium)`);
    process.exit(2);
  }
  if (opts.base) {
    const label = 'central ' + opts.base;
    await withTimeout(scenario({ label, base: opts.base, agents: opts.agents, synthetic: false, screenshot: opts.screenshot, dpr: 1 }), SCENARIO_TIMEOUT_MS, label);
  } else {
    const counts = opts.agents ? [opts.agents] : [1, 50];
    for (const [k, n] of counts.entries()) {
      const server = await startServer(n);
      const label = n + (n === 1 ? ' agent' : ' agents');
      try {
        // The 1-agent run uses a HiDPI screen so canvas scaling is checked too.
        const last = k === counts.length - 1;
        await withTimeout(scenario({ label, base: server.url, agents: n, synthetic: true, server, screenshot: last ? opts.screenshot : null, dpr: n === 1 ? 2 : 1 }), SCENARIO_TIMEOUT_MS, label);
      } finally {
        await server.close();
      }
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error('dashboard.mjs: ' + (err && err.stack ? err.stack : err));
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
