// Canvas charts for the dashboard: a time chart with axes (lines, areas or dots, one or two
// y axes) and a sparkline. No library: the page must work offline from the central binary.
// Everything is drawn in CSS pixels on a backing store scaled by devicePixelRatio.
(function () {
  'use strict';

  const FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif';
  const TITLE_FONT = '600 11px system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif';
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function theme() {
    return {
      text: cssVar('--chart-text', '#5b6675'),
      grid: cssVar('--chart-grid', '#edf0f4'),
      axis: cssVar('--chart-axis', '#c5cdd8'),
    };
  }

  // Sizes the backing store to the element's CSS size times devicePixelRatio and returns a
  // context that draws in CSS pixels.
  function prepare(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth));
    const h = Math.max(1, Math.round(canvas.clientHeight));
    const pw = Math.round(w * dpr);
    const ph = Math.round(h * dpr);
    if (canvas.width !== pw || canvas.height !== ph) {
      canvas.width = pw;
      canvas.height = ph;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  function niceStep(span, target) {
    const raw = span / target;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    const m = n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10;
    return m * mag;
  }

  function yScale(max, ticks) {
    if (!(max > 0)) max = 1;
    const step = niceStep(max, ticks);
    return { max: Math.ceil(max / step - 1e-9) * step, step };
  }

  function pad2(n) {
    return n < 10 ? '0' + n : String(n);
  }

  function clock(t, withSeconds) {
    const d = new Date(t * 1000);
    const hm = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
    return withSeconds ? hm + ':' + pad2(d.getSeconds()) : hm;
  }

  function finitePoints(points) {
    const out = [];
    if (!Array.isArray(points)) return out;
    for (const p of points) {
      if (Array.isArray(p) && Number.isFinite(p[0]) && Number.isFinite(p[1])) out.push(p);
    }
    out.sort((a, b) => a[0] - b[0]);
    return out;
  }

  // A line is broken where samples are missing (gap above three typical intervals), so an
  // agent that was away does not look like it sent a steady ramp.
  function gapLimit(points) {
    if (points.length < 3) return Infinity;
    const d = [];
    for (let i = 1; i < points.length; i++) d.push(points[i][0] - points[i - 1][0]);
    d.sort((a, b) => a - b);
    return Math.max(d[Math.floor(d.length / 2)] * 3, 2);
  }

  function withAlpha(color, alpha) {
    const m = /^#([0-9a-f]{6})$/i.exec(color);
    if (!m) return color;
    const n = parseInt(m[1], 16);
    return 'rgba(' + (n >> 16) + ',' + ((n >> 8) & 255) + ',' + (n & 255) + ',' + alpha + ')';
  }

  // opts: { series: [{ points: [[t, v]], color, axis: 'left'|'right', style: 'area'|'line'|'dots' }],
  //         left: { title, format }, right: { title, format } (optional), xTitle, emptyText,
  //         minSpan (seconds), range ([tmin, tmax] in unix seconds; default: the data's extent),
  //         padLeft, padRight (minimum margins in CSS px) }
  // Returns the number of data points drawn (also stored in canvas.dataset.points).
  function timeChart(canvas, opts) {
    const { ctx, w, h } = prepare(canvas);
    const th = theme();
    const series = opts.series.map((s) => Object.assign({}, s, { points: finitePoints(s.points) }));
    const all = series.flatMap((s) => s.points);
    const hasRight = Boolean(opts.right) && series.some((s) => s.axis === 'right');

    let tmin = Infinity;
    let tmax = -Infinity;
    if (opts.range) {
      tmin = opts.range[0];
      tmax = opts.range[1];
    } else {
      for (const p of all) {
        if (p[0] < tmin) tmin = p[0];
        if (p[0] > tmax) tmax = p[0];
      }
    }
    if (!Number.isFinite(tmin) || !Number.isFinite(tmax)) {
      tmax = Date.now() / 1000;
      tmin = tmax - 60;
    }
    const minSpan = opts.minSpan || 10;
    if (tmax - tmin < minSpan) tmin = tmax - minSpan;

    const maxOf = (axis) => {
      let m = 0;
      for (const s of series) if ((s.axis || 'left') === axis) for (const p of s.points) if (p[1] > m) m = p[1];
      return m;
    };
    const plotH0 = h - 12 - 34;
    const ticks = Math.max(2, Math.min(5, Math.floor(plotH0 / 36)));
    const ly = yScale(maxOf('left'), ticks);
    const ry = hasRight ? yScale(maxOf('right'), ticks) : null;
    const lfmt = (opts.left && opts.left.format) || String;
    const rfmt = (opts.right && opts.right.format) || String;

    ctx.font = FONT;
    let lw = 0;
    let rw = 0;
    for (let v = 0; v <= ly.max + 1e-9; v += ly.step) lw = Math.max(lw, ctx.measureText(lfmt(v)).width);
    if (ry) for (let v = 0; v <= ry.max + 1e-9; v += ry.step) rw = Math.max(rw, ctx.measureText(rfmt(v)).width);

    // padLeft/padRight are minimums, so charts stacked on one time range line up.
    const left = Math.max(opts.padLeft || 0, Math.ceil(lw) + 8 + 16);
    const right = Math.max(opts.padRight || 0, ry ? Math.ceil(rw) + 8 + 16 : 14);
    const top = 12;
    const bottom = 34;
    const pw = Math.max(10, w - left - right);
    const ph = Math.max(10, h - top - bottom);
    const x = (t) => left + ((t - tmin) / (tmax - tmin)) * pw;
    const yl = (v) => top + ph - (v / ly.max) * ph;
    const yr = ry ? (v) => top + ph - (v / ry.max) * ph : yl;

    // Grid and y labels.
    ctx.lineWidth = 1;
    ctx.textBaseline = 'middle';
    for (let v = 0; v <= ly.max + 1e-9; v += ly.step) {
      const yy = Math.round(yl(v)) + 0.5;
      ctx.strokeStyle = v === 0 ? th.axis : th.grid;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + pw, yy);
      ctx.stroke();
      ctx.fillStyle = th.text;
      ctx.textAlign = 'right';
      ctx.fillText(lfmt(v), left - 8, yy);
    }
    if (ry) {
      ctx.textAlign = 'left';
      for (let v = 0; v <= ry.max + 1e-9; v += ry.step) ctx.fillText(rfmt(v), left + pw + 8, Math.round(yr(v)) + 0.5);
    }

    // Time ticks.
    const span = tmax - tmin;
    const target = Math.max(2, Math.floor(pw / 80));
    let step = TIME_STEPS[TIME_STEPS.length - 1];
    for (const s of TIME_STEPS) {
      if (span / s <= target) {
        step = s;
        break;
      }
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let t = Math.ceil(tmin / step) * step; t <= tmax + 1e-9; t += step) {
      const xx = Math.round(x(t)) + 0.5;
      ctx.strokeStyle = th.axis;
      ctx.beginPath();
      ctx.moveTo(xx, top + ph);
      ctx.lineTo(xx, top + ph + 4);
      ctx.stroke();
      ctx.fillStyle = th.text;
      ctx.fillText(clock(t, step < 60), xx, top + ph + 6);
    }

    // Axis titles.
    ctx.font = TITLE_FONT;
    ctx.fillStyle = th.text;
    if (opts.xTitle) {
      ctx.textAlign = 'right';
      ctx.textBaseline = 'bottom';
      ctx.fillText(opts.xTitle, left + pw, h - 1);
    }
    const vTitle = (text, xx) => {
      ctx.save();
      ctx.translate(xx, top + ph / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(text, 0, 0);
      ctx.restore();
    };
    if (opts.left && opts.left.title) vTitle(opts.left.title, 7);
    if (ry && opts.right.title) vTitle(opts.right.title, w - 7);

    // Data, clipped to the plot.
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 2, pw, ph + 3);
    ctx.clip();
    let drawn = 0;
    const shown = [];
    for (const s of series) {
      const yf = s.axis === 'right' && ry ? yr : yl;
      const pts = s.points.filter((p) => p[0] >= tmin && p[0] <= tmax);
      drawn += pts.length;
      shown.push({ s, pts, yf });
      if (!pts.length) continue;
      if (s.style === 'dots') {
        ctx.fillStyle = withAlpha(s.color, 0.75);
        for (const p of pts) {
          ctx.beginPath();
          ctx.arc(x(p[0]), yf(p[1]), 2.5, 0, Math.PI * 2);
          ctx.fill();
        }
        continue;
      }
      const limit = gapLimit(pts);
      const runs = [[pts[0]]];
      for (let i = 1; i < pts.length; i++) {
        if (pts[i][0] - pts[i - 1][0] > limit) runs.push([]);
        runs[runs.length - 1].push(pts[i]);
      }
      for (const run of runs) {
        if (s.style === 'area' && run.length > 1) {
          ctx.beginPath();
          ctx.moveTo(x(run[0][0]), yf(0));
          for (const p of run) ctx.lineTo(x(p[0]), yf(p[1]));
          ctx.lineTo(x(run[run.length - 1][0]), yf(0));
          ctx.closePath();
          ctx.fillStyle = withAlpha(s.color, 0.12);
          ctx.fill();
        }
        ctx.beginPath();
        run.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), yf(p[1])) : ctx.moveTo(x(p[0]), yf(p[1]))));
        ctx.strokeStyle = s.color;
        ctx.lineWidth = 1.75;
        ctx.lineJoin = 'round';
        ctx.stroke();
        if (run.length === 1) {
          ctx.fillStyle = s.color;
          ctx.beginPath();
          ctx.arc(x(run[0][0]), yf(run[0][1]), 2, 0, Math.PI * 2);
          ctx.fill();
        }
      }
    }
    ctx.restore();

    if (drawn) drawHover(canvas, ctx, { shown, x, left, top, pw, ph, w, tmin, tmax });
    attachHover(canvas, opts);

    if (!drawn) {
      ctx.font = FONT;
      ctx.fillStyle = th.text;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(opts.emptyText || 'no data yet', left + pw / 2, top + ph / 2);
    }
    canvas.dataset.points = String(drawn);
    return drawn;
  }

  // Hover read-out: the sample nearest to the pointer (in time for lines, in the plane for
  // dots), a guide line and a small box with the time and each series' value.
  function drawHover(canvas, ctx, g) {
    const hover = canvas._xdtHover;
    if (!hover || hover.x < g.left || hover.x > g.left + g.pw) return;
    const th = theme();
    const picks = [];
    let t = null;
    const lines = g.shown.filter((e) => e.s.style !== 'dots' && e.pts.length);
    if (lines.length) {
      const target = g.tmin + ((hover.x - g.left) / g.pw) * (g.tmax - g.tmin);
      let best = null;
      for (const p of lines[lines.length - 1].pts) if (!best || Math.abs(p[0] - target) < Math.abs(best[0] - target)) best = p;
      t = best[0];
      for (const e of lines) {
        const p = e.pts.find((q) => q[0] === t);
        if (p) picks.push({ e, p });
      }
    } else {
      let best = null;
      let bestD = 20 * 20;
      for (const e of g.shown) {
        for (const p of e.pts) {
          const d = (g.x(p[0]) - hover.x) ** 2 + (e.yf(p[1]) - hover.y) ** 2;
          if (d < bestD) {
            bestD = d;
            best = { e, p };
          }
        }
      }
      if (!best) return;
      t = best.p[0];
      picks.push(best);
    }
    if (t === null || !picks.length) return;
    const px = g.x(t);
    ctx.save();
    ctx.strokeStyle = th.axis;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(Math.round(px) + 0.5, g.top);
    ctx.lineTo(Math.round(px) + 0.5, g.top + g.ph);
    ctx.stroke();
    ctx.setLineDash([]);
    for (const { e, p } of picks) {
      ctx.fillStyle = e.s.color;
      ctx.strokeStyle = cssVar('--panel', '#fff');
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(px, e.yf(p[1]), 4, 0, Math.PI * 2);
      ctx.fill();
      ctx.stroke();
    }
    const d = new Date(t * 1000);
    const rows = [[null, clock(t, true) + (d.getMilliseconds() ? '.' + String(d.getMilliseconds()).padStart(3, '0') : '')]];
    for (const { e, p } of picks) rows.push([e.s.color, (e.s.name ? e.s.name + ': ' : '') + (e.s.format ? e.s.format(p[1]) : String(p[1]))]);
    ctx.font = FONT;
    const bw = Math.max(...rows.map((r) => ctx.measureText(r[1]).width)) + 28;
    const bh = rows.length * 16 + 8;
    let bx = px + 10;
    if (bx + bw > g.left + g.pw) bx = px - 10 - bw;
    const by = g.top + 4;
    ctx.fillStyle = cssVar('--panel', '#fff');
    ctx.strokeStyle = th.axis;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.rect(Math.round(bx) + 0.5, by + 0.5, Math.round(bw), bh);
    ctx.fill();
    ctx.stroke();
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    rows.forEach(([color, text], i) => {
      const ty = by + 12 + i * 16;
      if (color) {
        ctx.fillStyle = color;
        ctx.fillRect(bx + 8, ty - 4, 8, 8);
      }
      ctx.fillStyle = color ? cssVar('--text', '#18212d') : th.text;
      ctx.fillText(text, bx + (color ? 20 : 8), ty);
    });
    ctx.restore();
  }

  function attachHover(canvas, opts) {
    canvas._xdtOpts = opts;
    if (canvas._xdtHoverBound) return;
    canvas._xdtHoverBound = true;
    const redraw = () => timeChart(canvas, canvas._xdtOpts);
    canvas.addEventListener('mousemove', (ev) => {
      const r = canvas.getBoundingClientRect();
      canvas._xdtHover = { x: ev.clientX - r.left, y: ev.clientY - r.top };
      redraw();
    });
    canvas.addEventListener('mouseleave', () => {
      canvas._xdtHover = null;
      redraw();
    });
  }

  // A tiny line without axes, for the agent list; scaled to its own maximum.
  function sparkline(canvas, values, color) {
    const { ctx, w, h } = prepare(canvas);
    const vals = values.filter((v) => Number.isFinite(v));
    canvas.dataset.points = String(vals.length);
    if (vals.length < 2) {
      ctx.strokeStyle = theme().axis;
      ctx.beginPath();
      ctx.moveTo(0, h - 1.5);
      ctx.lineTo(w, h - 1.5);
      ctx.stroke();
      return;
    }
    let max = 0;
    for (const v of vals) if (v > max) max = v;
    if (max <= 0) max = 1;
    const x = (i) => (i / (vals.length - 1)) * (w - 2) + 1;
    const y = (v) => h - 1.5 - (v / max) * (h - 4);
    ctx.beginPath();
    ctx.moveTo(x(0), h);
    vals.forEach((v, i) => ctx.lineTo(x(i), y(v)));
    ctx.lineTo(x(vals.length - 1), h);
    ctx.closePath();
    ctx.fillStyle = withAlpha(color, 0.15);
    ctx.fill();
    ctx.beginPath();
    vals.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.25;
    ctx.stroke();
  }

  window.XdtCharts = { timeChart, sparkline, cssVar };
})();
