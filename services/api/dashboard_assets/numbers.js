// Numbers as the page prints them. Money and other decimals arrive as JSON strings and are
// rounded exactly (half away from zero) from their digits, never through a binary float; ratios
// that arrive as JSON numbers are rounded by toFixed.

const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;

function grouped(integerDigits) {
  return integerDigits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function signed(negative, integerDigits, fraction) {
  const text = grouped(integerDigits) + (fraction ? `.${fraction}` : "");
  return negative ? `-${text}` : text;
}

/** `value` (a decimal string or a number) with `places` decimals and thousands separators;
 * an em dash for null. */
export function fixed(value, places = 2) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") {
    const [integer, fraction] = Math.abs(value).toFixed(places).split(".");
    const negative = value < 0 && /[1-9]/.test(integer + (fraction || ""));
    return signed(negative, integer, fraction);
  }
  const match = DECIMAL.exec(String(value).trim());
  if (match === null || (match[2] === "" && (match[3] || "") === "")) return String(value);
  const fractionDigits = match[3] || "";
  let units = BigInt((match[2] || "") + fractionDigits || "0");
  const shift = places - (fractionDigits.length - Number(match[4] || 0));
  if (shift >= 0) {
    units *= 10n ** BigInt(shift);
  } else {
    const divisor = 10n ** BigInt(-shift);
    const remainder = units % divisor;
    units = units / divisor + (2n * remainder >= divisor ? 1n : 0n);
  }
  const digits = units.toString().padStart(places + 1, "0");
  const integer = digits.slice(0, digits.length - places);
  return signed(match[1] === "-" && units !== 0n, integer, digits.slice(digits.length - places));
}

/** A fraction (0.5) as a percentage ("50.0 %"). */
export function percent(fraction, places = 1) {
  if (fraction === null || fraction === undefined) return "—";
  return `${fixed(typeof fraction === "number" ? fraction * 100 : scaled(fraction, 2), places)} %`;
}

/** A decimal string times 10^power, still a decimal string. */
function scaled(text, power) {
  const match = DECIMAL.exec(String(text).trim());
  if (match === null) return text;
  return `${match[1]}${match[2] || "0"}.${match[3] || "0"}e${Number(match[4] || 0) + power}`;
}

export function toNumber(value) {
  return value === null || value === undefined ? null : Number(value);
}

/** A sign class for colouring: "up", "down" or "flat". */
export function direction(value) {
  const n = toNumber(value);
  if (n === null || n === 0) return "flat";
  return n > 0 ? "up" : "down";
}
