// The analytics section, from one answer of GET /v1/analytics: headline tiles, the balance
// curve with its drawdown, the P&L calendar, the duration histogram and the breakdown table.

import { calendarHeatmap, durationHistogram, equityChart } from "./charts.js";
import { byId, el, replace } from "./dom.js";
import { direction, fixed, percent } from "./numbers.js";

function tile(name, value, options = {}) {
  return el(
    "div",
    { "data-figure": options.figure ?? null },
    el("dt", {}, name),
    el("dd", { class: options.tone ?? null }, value),
  );
}

function ratio(value) {
  return value === null ? "—" : fixed(value, 2);
}

function duration(seconds) {
  if (seconds === null) return "—";
  const units = [["d", 86_400], ["h", 3_600], ["min", 60], ["s", 1]];
  const parts = [];
  let left = Math.round(seconds);
  for (const [unit, size] of units) {
    if (left >= size || (unit === "s" && parts.length === 0)) {
      parts.push(`${Math.floor(left / size)} ${unit}`);
      left %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

function currentStreak(streak) {
  return streak.kind === null ? "—" : `${streak.trades} ${streak.kind}${streak.trades === 1 ? "" : streak.kind === "win" ? "s" : "es"}`;
}

function headlineTiles(analytics) {
  const h = analytics.headline;
  const dd = analytics.max_drawdown;
  const sharpe = analytics.sharpe;
  const recovery =
    dd.peak_date === null ? "no drawdown" : dd.recovery_days === null ? "not recovered" : `recovered in ${dd.recovery_days} days`;
  return [
    tile("Net P&L", fixed(h.net_pnl), { figure: "net_pnl", tone: direction(h.net_pnl) }),
    tile("Closed trades", `${h.trades}`, { figure: "trades" }),
    tile("Win rate", percent(h.win_rate), { figure: "win_rate" }),
    tile("Profit factor", ratio(h.profit_factor), { figure: "profit_factor" }),
    tile("Expectancy", fixed(h.expectancy), { figure: "expectancy", tone: direction(h.expectancy) }),
    tile(`Sharpe (N = ${sharpe.periods_per_year})`, ratio(sharpe.value), { figure: "sharpe" }),
    tile("Max drawdown", `${percent(dd.percent, 2)} · ${fixed(dd.amount)}`, { figure: "max_drawdown", tone: "down" }),
    tile("Recovery", recovery, { figure: "recovery" }),
    tile("Average win", fixed(h.average_win), { figure: "average_win", tone: "up" }),
    tile("Average loss", fixed(h.average_loss), { figure: "average_loss", tone: "down" }),
    tile("Largest win", fixed(h.largest_win), { figure: "largest_win", tone: "up" }),
    tile("Largest loss", fixed(h.largest_loss), { figure: "largest_loss", tone: "down" }),
  ];
}

function streakTiles(streaks) {
  return [
    tile("Longest win streak", `${streaks.longest_win}`, { figure: "longest_win" }),
    tile("Longest loss streak", `${streaks.longest_loss}`, { figure: "longest_loss" }),
    tile("Current streak", currentStreak(streaks.current), { figure: "current_streak" }),
  ];
}

// The breakdown's columns: a heading and how each headline shows in it.
const COLUMNS = [
  ["Trades", (h) => `${h.trades}`],
  ["Wins", (h) => `${h.wins}`],
  ["Losses", (h) => `${h.losses}`],
  ["Win rate", (h) => percent(h.win_rate)],
  ["Net P&L", (h) => fixed(h.net_pnl)],
  ["Profit factor", (h) => ratio(h.profit_factor)],
  ["Expectancy", (h) => fixed(h.expectancy)],
  ["Largest win", (h) => fixed(h.largest_win)],
  ["Largest loss", (h) => fixed(h.largest_loss)],
  ["Longest streaks (W / L)", (h) => `${h.streaks.longest_win} / ${h.streaks.longest_loss}`],
];

function breakdownRow(kind, key, name, detail, headline) {
  return el(
    "tr",
    { "data-kind": kind, "data-key": key },
    el("td", { "data-column": "name" }, name, detail ? el("span", { class: "quiet" }, ` ${detail}`) : null),
    COLUMNS.map(([heading, show], i) =>
      el("td", { class: i === 4 ? `n ${direction(headline.net_pnl)}` : "n", "data-column": heading }, show(headline)),
    ),
  );
}

function breakdown(analytics) {
  const table = byId("breakdown");
  replace(
    table.tHead,
    el("tr", {}, el("th", {}, ""), COLUMNS.map(([heading]) => el("th", { class: "n" }, heading))),
  );
  const rows = [breakdownRow("all", "all", "All accounts", analytics.currencies.join(", "), analytics.headline)];
  if (analytics.by_broker.length) rows.push(el("tr", { class: "group" }, el("td", { colspan: COLUMNS.length + 1 }, "By broker")));
  for (const b of analytics.by_broker) {
    rows.push(breakdownRow("broker", b.broker, b.broker, `${b.accounts} account${b.accounts === 1 ? "" : "s"}`, b.headline));
  }
  if (analytics.by_account.length) rows.push(el("tr", { class: "group" }, el("td", { colspan: COLUMNS.length + 1 }, "By account")));
  for (const a of analytics.by_account) {
    rows.push(breakdownRow("account", a.account_id, a.name, [a.broker, a.currency].filter(Boolean).join(" · "), a.headline));
  }
  replace(table.tBodies[0], rows);
}

function definitions(analytics) {
  const node = byId("definitions");
  const filters = analytics.filters;
  const notes = [];
  const other = analytics.excluded.other_connection_type_accounts;
  if (other) {
    const kind = filters.connection_type === "live" ? "demo" : "live";
    notes.push(el("p", { "data-note": "excluded" }, `${other} ${kind} account${other === 1 ? "" : "s"} left out: live and demo figures are never mixed.`));
  }
  if (analytics.currencies.length > 1) {
    notes.push(el("p", { "data-note": "currencies", class: "down" }, `These totals add amounts in ${analytics.currencies.join(", ")} as they are.`));
  }
  const list = el("dl", {});
  for (const [name, text] of Object.entries(analytics.definitions)) {
    list.append(el("dt", {}, name.replaceAll("_", " ")), el("dd", {}, text));
  }
  replace(node, ...notes, el("details", {}, el("summary", {}, "How each figure is defined"), list));
}

/** Renders the answer; false when there is nothing to show (no closed trade, no curve). */
export function renderAnalytics(analytics) {
  if (analytics.headline.trades === 0 && analytics.curve.length === 0) return false;
  const currency = analytics.currencies.length === 1 ? analytics.currencies[0] : "";
  replace(byId("headline"), headlineTiles(analytics));
  replace(byId("streaks"), streakTiles(analytics.headline.streaks));
  replace(byId("equity"), equityChart(analytics.curve, currency));
  const dd = analytics.max_drawdown;
  byId("drawdown-note").textContent =
    dd.peak_date === null
      ? "No drawdown in this period."
      : `Deepest drawdown ${percent(dd.percent, 2)} from ${dd.peak_date} to ${dd.trough_date}` +
        (dd.recovery_date === null ? ", not recovered yet." : `, back at the peak on ${dd.recovery_date}.`);
  replace(byId("calendar"), calendarHeatmap(analytics.calendar.daily, analytics.calendar.weekly));
  replace(byId("durations"), durationHistogram(analytics.durations.buckets));
  byId("duration-median").textContent = `· median ${duration(analytics.durations.median_seconds)}`;
  breakdown(analytics);
  definitions(analytics);
  return true;
}
