/**
 * Durations: every `...Ms` setting takes a number of milliseconds or a
 * string such as "250ms", "5s", "1m", "1h" (a whole number and one unit).
 * The one parser for them: the schema (schema.ts marks every `*Ms` key),
 * the loader (validate.ts converts before the bounds are checked, so
 * "48h" is refused by the same maximum as 172800000) and the overrides
 * (`--set upstreams.u.timeouts.connectMs=5s`, TURNPIKE_..._CONNECTMS=5s)
 * all go through it.
 */

/** A whole number and a unit, nothing else (no spaces, no fractions, no sign). */
export const DURATION_PATTERN = '^[0-9]+(?:ms|s|m|h)$';
const DURATION_RE = /^([0-9]+)(ms|s|m|h)$/;

const UNIT_MS: Readonly<Record<string, number>> = Object.freeze({ ms: 1, s: 1_000, m: 60_000, h: 3_600_000 });

/** What a bad duration is told, before ` (got ...)`. */
export const DURATION_MESSAGE = 'must be a number of milliseconds or a duration such as "250ms", "5s", "1m"';
/** Said after ` (got ...)`: the accepted forms in full. */
export const DURATION_FORMS = 'durations are a whole number followed by ms, s, m or h';

/**
 * "5s" -> 5000. Null when `text` is not a duration. A number far beyond any
 * bound comes back as it is (possibly Infinity): the caller's bounds refuse it.
 */
export function parseDuration(text: string): number | null {
  const m = DURATION_RE.exec(text);
  if (m === null) return null;
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

/**
 * A number of milliseconds as the shortest exact duration: 86400000 -> "24h",
 * 1500 -> "1500ms". For messages and comments.
 */
export function formatDuration(ms: number): string {
  if (!Number.isSafeInteger(ms) || ms <= 0) return `${ms}ms`;
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
