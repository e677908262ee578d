// The charts, drawn as inline SVG from plain arrays: a few dozen lines each, no library to vendor
// or build, nothing loaded from elsewhere (the page's policy allows only this origin), and every
// mark carries the value it stands for, as its tooltip and as data-* attributes.

import { svg } from "./dom.js";
import { fixed, percent } from "./numbers.js";

const DAY_MS = 86_400_000;

function scale(domainLow, domainHigh, rangeLow, rangeHigh) {
  const span = domainHigh - domainLow || 1;
  return (value) => rangeLow + ((value - domainLow) / span) * (rangeHigh - rangeLow);
}

function round(value) {
  return Math.round(value * 100) / 100;
}

/** The balance curve, and under it the drawdown shaded: how far the time-weighted curve stands
 * below its running peak each day, as the API measures it.
 * `points`: [{date: "YYYY-MM-DD", balance: "decimal", equity, drawdown: -0.05}], oldest first. */
export function equityChart(points, currency = "") {
  const width = 880;
  const height = 300;
  const pad = { left: 72, right: 16, top: 12 };
  const curveBottom = 196;
  const drawdownTop = 212;
  const drawdownBottom = 272;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "equity",
    role: "img",
    "aria-label": `Balance and drawdown, ${points.length} days`,
  });
  if (points.length === 0) return chart;
  const balances = points.map((point) => Number(point.balance));
  const drawdowns = points.map((point) => point.drawdown);
  const low = Math.min(...balances);
  const high = Math.max(...balances);
  const deepest = Math.min(0, ...drawdowns);
  const x = scale(0, Math.max(points.length - 1, 1), pad.left, width - pad.right);
  const y = scale(low, high, curveBottom, pad.top);
  const yDrawdown = scale(0, deepest || -1, drawdownTop, drawdownBottom);
  const along = (series, at) => series.map((value, i) => `${round(x(i))},${round(at(value))}`);
  const last = points.length - 1;

  chart.append(
    svg("text", { class: "tick", x: pad.left - 6, y: round(y(high)) + 4, "text-anchor": "end" }, fixed(String(high), 0)),
    svg("text", { class: "tick", x: pad.left - 6, y: round(y(low)) + 4, "text-anchor": "end" }, fixed(String(low), 0)),
    svg("text", { class: "tick", x: pad.left - 6, y: drawdownTop + 4, "text-anchor": "end" }, "0 %"),
    svg("text", { class: "tick", x: pad.left - 6, y: drawdownBottom + 4, "text-anchor": "end" }, percent(deepest, 1)),
    svg("text", { class: "tick", x: pad.left, y: height - 4 }, points[0].date),
    svg("text", { class: "tick", x: width - pad.right, y: height - 4, "text-anchor": "end" }, points[last].date),
    svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: drawdownTop, y2: drawdownTop }),
    svg("polygon", {
      class: "drawdown",
      points: [`${round(x(0))},${drawdownTop}`, ...along(drawdowns, yDrawdown), `${round(x(last))},${drawdownTop}`].join(" "),
    }),
    svg("polyline", { class: "curve", points: along(balances, y).join(" ") }),
  );
  const marks = svg("g", { class: "points" });
  points.forEach((point, i) => {
    const equity = point.equity === null ? "" : ` · equity ${fixed(point.equity)}`;
    marks.append(
      svg(
        "circle",
        {
          class: "point",
          cx: round(x(i)),
          cy: round(y(balances[i])),
          r: 3,
          "data-date": point.date,
          "data-balance": point.balance,
          "data-drawdown": point.drawdown,
        },
        svg("title", {}, `${point.date}: ${fixed(point.balance)} ${currency}${equity} · drawdown ${percent(point.drawdown, 2)}`),
      ),
    );
  });
  chart.append(marks);
  return chart;
}

function dayNumber(isoDate) {
  return Math.round(Date.parse(`${isoDate}T00:00:00Z`) / DAY_MS);
}

function isoDate(day) {
  return new Date(day * DAY_MS).toISOString().slice(0, 10);
}

/** Monday 0 ... Sunday 6. */
function weekday(day) {
  return (new Date(day * DAY_MS).getUTCDay() + 6) % 7;
}

function intensity(value, largest) {
  if (!value || !largest) return "zero";
  const step = Math.min(4, Math.ceil((Math.abs(value) / largest) * 4));
  return `${value > 0 ? "gain" : "loss"}-${step}`;
}

const WEEKDAYS = ["Mon", "", "Wed", "", "Fri", "", "Sun"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** A calendar heatmap: one column per week (Monday first), one cell per day from the first day
 * to the last, coloured by that day's P&L; under it, each week's P&L.
 * `days`: [{date, pnl, trades}]; `weeks`: [{week_start, pnl, trades}]. */
export function calendarHeatmap(days, weeks) {
  const gap = 2;
  const left = 34;
  const top = 16;
  if (days.length === 0) return svg("svg", { class: "calendar", viewBox: "0 0 10 10" });
  const byDay = new Map(days.map((d) => [dayNumber(d.date), d]));
  const first = Math.min(...byDay.keys());
  const last = Math.max(...byDay.keys());
  const start = first - weekday(first);
  const columns = Math.floor((last - start) / 7) + 1;
  const cell = columns <= 26 ? 22 : 13; // a few weeks get bigger cells than years do
  const width = left + columns * (cell + gap) + 4;
  const height = top + 8 * (cell + gap) + 8;
  const chart = svg("svg", {
    class: "calendar",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": `Daily P&L, ${days.length} trading days`,
  });
  const largestDay = Math.max(...days.map((d) => Math.abs(Number(d.pnl))));
  WEEKDAYS.forEach((name, row) => {
    if (name) chart.append(svg("text", { class: "tick", x: 0, y: top + row * (cell + gap) + cell - 3 }, name));
  });
  chart.append(svg("text", { class: "tick", x: 0, y: top + 7 * (cell + gap) + cell + 1 }, "Week"));
  let month = null;
  for (let day = first; day <= last; day += 1) {
    const column = Math.floor((day - start) / 7);
    const date = new Date(day * DAY_MS);
    if (date.getUTCMonth() !== month) {
      month = date.getUTCMonth();
      chart.append(svg("text", { class: "tick", x: left + column * (cell + gap), y: 10 }, MONTHS[month]));
    }
    const traded = byDay.get(day);
    const where = { x: left + column * (cell + gap), y: top + weekday(day) * (cell + gap), width: cell, height: cell, rx: 2 };
    if (traded === undefined) {
      chart.append(svg("rect", { ...where, class: "day none", "data-date": isoDate(day) }));
      continue;
    }
    chart.append(
      svg(
        "rect",
        {
          ...where,
          class: `day traded ${intensity(Number(traded.pnl), largestDay)}`,
          "data-date": traded.date,
          "data-pnl": traded.pnl,
          "data-trades": traded.trades,
        },
        svg("title", {}, `${traded.date}: ${fixed(traded.pnl)} · ${traded.trades} trades`),
      ),
    );
  }
  const largestWeek = Math.max(...weeks.map((w) => Math.abs(Number(w.pnl))));
  for (const week of weeks) {
    const column = Math.floor((dayNumber(week.week_start) - start) / 7);
    chart.append(
      svg(
        "rect",
        {
          class: `week ${intensity(Number(week.pnl), largestWeek)}`,
          x: left + column * (cell + gap),
          y: top + 7 * (cell + gap) + 4,
          width: cell,
          height: cell,
          rx: 2,
          "data-week-start": week.week_start,
          "data-pnl": week.pnl,
          "data-trades": week.trades,
        },
        svg("title", {}, `week of ${week.week_start}: ${fixed(week.pnl)} · ${week.trades} trades`),
      ),
    );
  }
  return chart;
}

/** A histogram of trade durations: `buckets`: [{label, trades}], in order. */
export function durationHistogram(buckets) {
  const width = 560;
  const height = 220;
  const pad = { left: 8, right: 8, top: 18, bottom: 34 };
  const chart = svg("svg", {
    class: "histogram",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "Trade durations",
  });
  const most = Math.max(1, ...buckets.map((b) => b.trades));
  const slot = (width - pad.left - pad.right) / Math.max(buckets.length, 1);
  const y = scale(0, most, height - pad.bottom, pad.top);
  buckets.forEach((bucket, i) => {
    const x = pad.left + i * slot;
    const top = round(y(bucket.trades));
    chart.append(
      svg(
        "rect",
        {
          class: "bar",
          x: round(x + slot * 0.15),
          y: top,
          width: round(slot * 0.7),
          height: round(height - pad.bottom - top),
          "data-bucket": bucket.label,
          "data-trades": bucket.trades,
        },
        svg("title", {}, `${bucket.label}: ${bucket.trades} trades`),
      ),
      svg("text", { class: "count", x: round(x + slot / 2), y: top - 4, "text-anchor": "middle" }, bucket.trades),
      svg("text", { class: "tick", x: round(x + slot / 2), y: height - pad.bottom + 14, "text-anchor": "middle" }, bucket.label),
    );
  });
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom }));
  return chart;
}
