/**
 * Calendar periods of quotas: the start and end (Unix ms) of the hour, day,
 * ISO week (Monday 00:00) or month containing an instant, in an IANA time
 * zone, DST included (a day in Europe/Paris may last 23 or 25 hours).
 *
 * Intl does the time-zone arithmetic (no library: Intl carries the tz
 * database). It costs microseconds, so a quota computes its period once and
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

/** Offset of `timeZone` from UTC at instant `ms` (ms; +3600000 for Paris in winter). */
function offsetAt(ms: number, timeZone: string): number {
  const w = wallAt(ms, timeZone);
  const asUtc = Date.UTC(w.y, w.mo - 1, w.d, w.h, w.mi, w.s);
  return asUtc - (ms - (((ms % 1000) + 1000) % 1000));
}

/**
 * The instant the wall clock of `timeZone` reads y-mo-d h:00 (the first such
 * instant; a wall time skipped by a DST jump maps to the instant after the jump).
 */
function instantOf(y: number, mo: number, d: number, h: number, timeZone: string): number {
  const guess = Date.UTC(y, mo - 1, d, h);
  let t = guess - offsetAt(guess, timeZone);
  // The offset at the result may differ from the one at the guess (DST): settle it.
  const o2 = offsetAt(t, timeZone);
  const t2 = guess - o2;
  if (t2 !== t) t = offsetAt(t2, timeZone) === o2 ? t2 : Math.max(t, t2);
  return t;
}

/** [start, end) of the period containing `now`, Unix ms. */
export function periodBounds(now: number, period: Period, timeZone: string): [number, number] {
  const w = wallAt(now, timeZone);
  switch (period) {
    case 'hour': {
      const start = instantOf(w.y, w.mo, w.d, w.h, timeZone);
      // Hours are 3,600,000 ms everywhere (zones with 30- or 45-minute offsets included).
      return [start, start + 3_600_000];
    }
    case 'day': {
      const next = new Date(Date.UTC(w.y, w.mo - 1, w.d + 1));
      return [instantOf(w.y, w.mo, w.d, 0, timeZone), instantOf(next.getUTCFullYear(), next.getUTCMonth() + 1, next.getUTCDate(), 0, timeZone)];
    }
    case 'week': {
      const dow = (new Date(Date.UTC(w.y, w.mo - 1, w.d)).getUTCDay() + 6) % 7; // Monday = 0
      const first = new Date(Date.UTC(w.y, w.mo - 1, w.d - dow));
      const next = new Date(Date.UTC(w.y, w.mo - 1, w.d - dow + 7));
      return [
        instantOf(first.getUTCFullYear(), first.getUTCMonth() + 1, first.getUTCDate(), 0, timeZone),
        instantOf(next.getUTCFullYear(), next.getUTCMonth() + 1, next.getUTCDate(), 0, timeZone),
      ];
    }
    case 'month': {
      const ny = w.mo === 12 ? w.y + 1 : w.y;
      const nm = w.mo === 12 ? 1 : w.mo + 1;
      return [instantOf(w.y, w.mo, 1, 0, timeZone), instantOf(ny, nm, 1, 0, timeZone)];
    }
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
