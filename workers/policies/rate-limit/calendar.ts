/**
 * Calendar periods of quotas: the start and end (Unix ms) of the hour, day,
 * ISO week (Monday 00:00) or month containing an instant, in an IANA time
 * zone, DST included (a day in Europe/Paris may last 23 or 25 hours).
 *
 * Intl does the time-zone arithmetic (no library: Intl carries the tz
 * database). A bound costs a few microseconds (tens next to a DST change,
 * where it is found by bisection), so a quota computes its period once and
 * again only when the period ends (`PeriodCache`), not per request.
 */

export type Period = 'hour' | 'day' | 'week' | 'month';

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (f === undefined) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
    });
    formatters.set(timeZone, f);
  }
  return f;
}

interface Wall { y: number; mo: number; d: number; h: number; mi: number; s: number }

/** The wall-clock reading in `timeZone` at instant `ms`. */
function wallAt(ms: number, timeZone: string): Wall {
  const w: Wall = { y: 0, mo: 0, d: 0, h: 0, mi: 0, s: 0 };
  for (const p of formatter(timeZone).formatToParts(ms)) {
    const v = Number(p.value);
    switch (p.type) {
      case 'year': w.y = v; break;
      case 'month': w.mo = v; break;
      case 'day': w.d = v; break;
      case 'hour': w.h = v; break;
      case 'minute': w.mi = v; break;
      case 'second': w.s = v; break;
    }
  }
  return w;
}

/**
 * The local wall-clock reading at instant `ms`, as if it were a UTC time
 * (ms; the sub-second part carried over): `wallKey(ms) - ms` is the
 * zone's offset then.
 */
function wallKey(ms: number, timeZone: string): number {
  const w = wallAt(ms, timeZone);
  return Date.UTC(w.y, w.mo - 1, w.d, w.h, w.mi, w.s) + (((ms % 1000) + 1000) % 1000);
}

/** Offset of `timeZone` from UTC at instant `ms` (ms; +3600000 for Paris in winter). */
function offsetAt(ms: number, timeZone: string): number {
  return wallKey(ms, timeZone) - ms;
}

/** UTC offsets lie within these bounds (-12:00 .. +14:00), with room to spare. */
const MAX_WEST_MS = 13 * 3_600_000;
const MAX_EAST_MS = 15 * 3_600_000;

/**
 * The first instant (whole ms) at which the wall clock of `timeZone` reads
 * `wall` (a wall time written as a UTC time) or later: the instant it reads
 * exactly that, or, when a DST jump skips it (Santiago's midnight in
 * September), the instant of the jump.
 */
function firstAt(wall: number, timeZone: string): number {
  // Usually: the offset at the guess, settled once.
  const t = wall - offsetAt(wall - offsetAt(wall, timeZone), timeZone);
  if (wallKey(t, timeZone) >= wall && wallKey(t - 1, timeZone) < wall) return t;
  // Near a DST change: bisect (a wall reading never lags the instant by
  // more than the largest offset, nor leads it by more than the smallest).
  let lo = wall - MAX_EAST_MS; // reads before `wall`
  let hi = wall + MAX_WEST_MS; // reads `wall` or later
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (wallKey(mid, timeZone) >= wall) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** The first instant in (a, b] whose offset differs from the one at `a` (b's differs). */
function offsetChange(a: number, b: number, timeZone: string): number {
  const o = offsetAt(a, timeZone);
  let lo = Math.floor(a);
  let hi = Math.ceil(b);
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (offsetAt(mid, timeZone) === o) lo = mid;
    else hi = mid;
  }
  return hi;
}

/**
 * [start, end) of the period containing `now`, Unix ms (whole
 * milliseconds; `now` may have a fraction).
 *
 *   hour   a clock hour at one UTC offset: 60 minutes, except next to a
 *          DST change that is not a whole hour (Lord Howe: 30 minutes).
 *          The hour a change repeats (02:00-03:00 in Paris in October) is
 *          two periods; the hour a change skips does not exist.
 *   day    local midnight to local midnight (23 or 25 hours on DST days;
 *          where DST changes at midnight, the day starts at the jump)
 *   week   Monday 00:00 to the next Monday 00:00, local
 *   month  the 1st 00:00 to the next month's 1st 00:00, local
 */
export function periodBounds(now: number, period: Period, timeZone: string): [number, number] {
  const w = wallAt(now, timeZone);
  switch (period) {
    case 'hour': {
      const second = Math.floor(now / 1000) * 1000;
      const into = (w.mi * 60 + w.s) * 1000;
      let start = second - into;
      let end = start + 3_600_000;
      // The clock went straight from the hour's start to now, and will to its
      // end, unless the offset changes in between: then the change bounds it.
      const o = offsetAt(now, timeZone);
      if (offsetAt(start, timeZone) !== o) start = offsetChange(start, now, timeZone);
      if (offsetAt(end, timeZone) !== o) end = offsetChange(now, end, timeZone);
      return [start, end];
    }
    case 'day':
      return [firstAt(Date.UTC(w.y, w.mo - 1, w.d), timeZone), firstAt(Date.UTC(w.y, w.mo - 1, w.d + 1), timeZone)];
    case 'week': {
      const monday = w.d - ((new Date(Date.UTC(w.y, w.mo - 1, w.d)).getUTCDay() + 6) % 7);
      return [firstAt(Date.UTC(w.y, w.mo - 1, monday), timeZone), firstAt(Date.UTC(w.y, w.mo - 1, monday + 7), timeZone)];
    }
    case 'month':
      return [firstAt(Date.UTC(w.y, w.mo - 1, 1), timeZone), firstAt(Date.UTC(w.y, w.mo, 1), timeZone)];
  }
}

/** The current period of one quota, recomputed only when it ends. */
export class PeriodCache {
  start = 0;
  end = 0;

  constructor(private readonly period: Period, private readonly timeZone: string) {}

  /** Refreshes start/end when `now` left the cached period. */
  at(now: number): void {
    if (now >= this.start && now < this.end) return;
    const [s, e] = periodBounds(now, this.period, this.timeZone);
    this.start = s;
    this.end = e;
  }
}
