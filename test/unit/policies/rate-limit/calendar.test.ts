/**
 * Calendar periods of quotas (workers/policies/rate-limit/calendar.ts).
 *
 * What a period is, stated independently of the code under test, as a
 * label every instant has in the quota's time zone (read with Intl, the
 * same tz database):
 *   hour   the local date and hour, and the UTC offset (so the hour a DST
 *          change repeats is two periods, each at most 60 minutes)
 *   day    the local date
 *   week   the local date of the Monday on or before the local date
 *   month  the local year and month
 * A period is the longest run of instants with one label. The reference
 * finds its bounds by stepping (shorter than any period) and bisecting;
 * periodBounds must give the same bounds, to the millisecond, for every
 * period in UTC and in zones with DST (Paris: 23- and 25-hour days; New
 * York; Lord Howe's 30-minute shift; Sao Paulo and Santiago, whose DST
 * changes at midnight), offsets of :30 and :45 (Kolkata, Kathmandu,
 * Chatham, St John's) and Apia's skipped day; at random instants, around
 * every DST change of 2023-2025, and at month and year ends (leap years).
 * Then the same facts written out for people: the lengths of known days,
 * weeks and months.
 */
import { describe, expect, it } from 'vitest';
import { PeriodCache, periodBounds, type Period } from '../../../../workers/policies/rate-limit/calendar.js';
import { Rng } from './harness.js';

const H = 3_600_000;
const DAY = 24 * H;
const utc = (s: string) => Date.parse(s);

const fmts = new Map<string, Intl.DateTimeFormat>();
function parts(ms: number, tz: string): Record<string, string> {
  let f = fmts.get(tz);
  if (f === undefined) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', timeZoneName: 'longOffset',
    });
    fmts.set(tz, f);
  }
  const out: Record<string, string> = {};
  for (const p of f.formatToParts(ms)) out[p.type] = p.value;
  return out;
}

function label(ms: number, period: Period, tz: string): string {
  const p = parts(ms, tz);
  switch (period) {
    case 'hour': return `${p['year']}-${p['month']}-${p['day']} ${p['hour']} ${p['timeZoneName']}`;
    case 'day': return `${p['year']}-${p['month']}-${p['day']}`;
    case 'month': return `${p['year']}-${p['month']}`;
    case 'week': {
      const d = new Date(Date.UTC(Number(p['year']), Number(p['month']) - 1, Number(p['day'])));
      d.setUTCDate(d.getUTCDate() - ((d.getUTCDay() + 6) % 7));
      return d.toISOString().slice(0, 10);
    }
  }
}

/** Bounds of the run of instants sharing `x`'s label (the reference). */
function reference(x: number, period: Period, tz: string): [number, number] {
  const l = label(x, period, tz);
  const step = period === 'hour' ? 15 * 60_000 : 6 * H; // shorter than any period
  const edge = (dir: -1 | 1): number => {
    let inside = x;
    let outside = x + dir * step;
    while (label(outside, period, tz) === l) {
      inside = outside;
      outside += dir * step;
    }
    // Bisect to the millisecond: `inside` has the label, `outside` not.
    while (Math.abs(outside - inside) > 1) {
      const mid = Math.floor((inside + outside) / 2);
      if (label(mid, period, tz) === l) inside = mid;
      else outside = mid;
    }
    return dir === -1 ? inside : outside;
  };
  return [edge(-1), edge(1)];
}

const ZONES = [
  'UTC', 'Europe/Paris', 'America/New_York', 'Asia/Kolkata', 'Australia/Lord_Howe', 'America/Sao_Paulo', 'America/Santiago',
  'Asia/Kathmandu', 'Pacific/Chatham', 'America/St_Johns',
];
const PERIODS: Period[] = ['hour', 'day', 'week', 'month'];

/** Instants where the UTC offset of `tz` changes, in [from, to) (hour steps, then bisection). */
function transitions(tz: string, from: number, to: number): number[] {
  const off = (ms: number) => parts(ms, tz)['timeZoneName'];
  const out: number[] = [];
  for (let t = from; t < to; t += H) {
    if (off(t) === off(t + H)) continue;
    let a = t;
    let b = t + H;
    while (b - a > 1) {
      const m = Math.floor((a + b) / 2);
      if (off(m) === off(t)) a = m;
      else b = m;
    }
    out.push(b);
  }
  return out;
}

function instantsFor(tz: string, rng: Rng): number[] {
  const xs: number[] = [];
  const from = utc('2023-01-01T00:00:00Z');
  const to = utc('2026-01-01T00:00:00Z');
  for (let i = 0; i < 40; i++) xs.push(from + Math.floor(rng.next() * (to - from)));
  for (const t of transitions(tz, from, to)) {
    for (const d of [-2 * H, -H - 1, -H, -30 * 60_000 - 1, -1000, -1, 0, 1, 30 * 60_000, H - 1, H, 2 * H]) xs.push(t + d);
  }
  return xs;
}

describe('periodBounds against the reference', () => {
  it.each(ZONES)('%s: every period, at random instants and around every DST change of 2023-2025', (tz) => {
    const rng = new Rng(tz.length * 7919);
    const xs = instantsFor(tz, rng);
    const wrong: string[] = [];
    for (const x of xs) {
      for (const period of PERIODS) {
        const got = periodBounds(x, period, tz);
        const want = reference(x, period, tz);
        if (got[0] !== want[0] || got[1] !== want[1]) {
          wrong.push(`${period} at ${new Date(x).toISOString()}: got [${new Date(got[0]).toISOString()}, ${new Date(got[1]).toISOString()}), want [${new Date(want[0]).toISOString()}, ${new Date(want[1]).toISOString()})`);
        }
      }
    }
    expect(wrong.slice(0, 10)).toEqual([]);
  });

  it('month and year ends, leap years included, in several zones', () => {
    const wrong: string[] = [];
    const local = ['2023-02-28', '2023-03-01', '2024-02-28', '2024-02-29', '2024-03-01', '2024-12-31', '2025-01-01', '2025-12-31', '2026-01-01', '2024-04-30', '2024-05-01'];
    for (const tz of ['UTC', 'Europe/Paris', 'Asia/Kolkata', 'Australia/Lord_Howe', 'Pacific/Chatham', 'America/Santiago']) {
      for (const day of local) {
        // Around that date's start and end, wherever the zone puts them.
        const noon = utc(`${day}T12:00:00Z`);
        const [s, e] = reference(noon, 'day', tz);
        for (const x of [s, s + 1, noon, e - 1000, e - 1, e]) {
          for (const period of PERIODS) {
            const got = periodBounds(x, period, tz);
            const want = reference(x, period, tz);
            if (got[0] !== want[0] || got[1] !== want[1]) wrong.push(`${tz} ${period} at ${new Date(x).toISOString()}`);
          }
        }
      }
    }
    expect(wrong).toEqual([]);
  });

  it('Apia, which skipped 30 December 2011: the 29th ends where the 31st begins', () => {
    const x = utc('2011-12-29T12:00:00Z'); // 29 Dec, 02:00 local (UTC-10)
    const [s, e] = periodBounds(x, 'day', 'Pacific/Apia');
    expect([s, e]).toEqual(reference(x, 'day', 'Pacific/Apia'));
    expect(e - s).toBe(DAY);
    expect(periodBounds(e, 'day', 'Pacific/Apia')[0]).toBe(e);
    expect(label(e, 'day', 'Pacific/Apia')).toBe('2011-12-31');
  });
});

describe('periods people can check', () => {
  const len = (x: number, p: Period, tz: string) => {
    const [s, e] = periodBounds(x, p, tz);
    expect(s).toBeLessThanOrEqual(x);
    expect(e).toBeGreaterThan(x);
    return e - s;
  };

  it('UTC: hours, days, Monday weeks and calendar months', () => {
    const x = utc('2024-01-03T15:42:07.123Z'); // a Wednesday
    expect(periodBounds(x, 'hour', 'UTC')).toEqual([utc('2024-01-03T15:00:00Z'), utc('2024-01-03T16:00:00Z')]);
    expect(periodBounds(x, 'day', 'UTC')).toEqual([utc('2024-01-03T00:00:00Z'), utc('2024-01-04T00:00:00Z')]);
    expect(periodBounds(x, 'week', 'UTC')).toEqual([utc('2024-01-01T00:00:00Z'), utc('2024-01-08T00:00:00Z')]);
    expect(periodBounds(x, 'month', 'UTC')).toEqual([utc('2024-01-01T00:00:00Z'), utc('2024-02-01T00:00:00Z')]);
    // A Monday starts its own week; a Sunday ends the week before.
    expect(periodBounds(utc('2024-01-08T00:00:00Z'), 'week', 'UTC')[0]).toBe(utc('2024-01-08T00:00:00Z'));
    expect(periodBounds(utc('2024-01-07T23:59:59.999Z'), 'week', 'UTC')[0]).toBe(utc('2024-01-01T00:00:00Z'));
    // A week across the year's end.
    expect(periodBounds(utc('2025-01-01T10:00:00Z'), 'week', 'UTC')).toEqual([utc('2024-12-30T00:00:00Z'), utc('2025-01-06T00:00:00Z')]);
    // February, leap and not; December into January.
    expect(len(utc('2024-02-15T00:00:00Z'), 'month', 'UTC')).toBe(29 * DAY);
    expect(len(utc('2023-02-15T00:00:00Z'), 'month', 'UTC')).toBe(28 * DAY);
    expect(len(utc('2100-02-15T00:00:00Z'), 'month', 'UTC')).toBe(28 * DAY); // not a leap year
    expect(len(utc('2000-02-15T00:00:00Z'), 'month', 'UTC')).toBe(29 * DAY);
    expect(periodBounds(utc('2024-12-31T23:59:59.999Z'), 'month', 'UTC')).toEqual([utc('2024-12-01T00:00:00Z'), utc('2025-01-01T00:00:00Z')]);
    expect(periodBounds(utc('2025-01-01T00:00:00Z'), 'day', 'UTC')[0]).toBe(utc('2025-01-01T00:00:00Z'));
  });

  it('Europe/Paris: a 23-hour day in March, a 25-hour day in October, hours of 60 minutes throughout', () => {
    const tz = 'Europe/Paris';
    expect(periodBounds(utc('2024-03-31T12:00:00Z'), 'day', tz)).toEqual([utc('2024-03-30T23:00:00Z'), utc('2024-03-31T22:00:00Z')]);
    expect(len(utc('2024-03-31T12:00:00Z'), 'day', tz)).toBe(23 * H);
    expect(periodBounds(utc('2024-10-27T12:00:00Z'), 'day', tz)).toEqual([utc('2024-10-26T22:00:00Z'), utc('2024-10-27T23:00:00Z')]);
    expect(len(utc('2024-10-27T12:00:00Z'), 'day', tz)).toBe(25 * H);
    expect(len(utc('2024-10-27T12:00:00Z'), 'week', tz)).toBe(7 * DAY + H);
    expect(len(utc('2024-03-15T12:00:00Z'), 'month', tz)).toBe(31 * DAY - H);
    // 02:00-03:00 happens twice on 27 October (CEST, then CET): two hours, not one of two.
    expect(periodBounds(utc('2024-10-27T00:30:00Z'), 'hour', tz)).toEqual([utc('2024-10-27T00:00:00Z'), utc('2024-10-27T01:00:00Z')]);
    expect(periodBounds(utc('2024-10-27T01:30:00Z'), 'hour', tz)).toEqual([utc('2024-10-27T01:00:00Z'), utc('2024-10-27T02:00:00Z')]);
    // 02:00-03:00 never happens on 31 March: 01:00 CET is followed by 03:00 CEST.
    expect(periodBounds(utc('2024-03-31T00:59:59Z'), 'hour', tz)).toEqual([utc('2024-03-31T00:00:00Z'), utc('2024-03-31T01:00:00Z')]);
    expect(periodBounds(utc('2024-03-31T01:00:00Z'), 'hour', tz)).toEqual([utc('2024-03-31T01:00:00Z'), utc('2024-03-31T02:00:00Z')]);
  });

  it('America/New_York: 23 and 25 hours on the DST days', () => {
    const tz = 'America/New_York';
    expect(periodBounds(utc('2024-03-10T12:00:00Z'), 'day', tz)).toEqual([utc('2024-03-10T05:00:00Z'), utc('2024-03-11T04:00:00Z')]);
    expect(len(utc('2024-11-03T12:00:00Z'), 'day', tz)).toBe(25 * H);
    // Local midnight of New Year in New York is 05:00 UTC.
    expect(periodBounds(utc('2025-01-01T03:00:00Z'), 'month', tz)).toEqual([utc('2024-12-01T05:00:00Z'), utc('2025-01-01T05:00:00Z')]);
  });

  it('Asia/Kolkata (+05:30): days start at 18:30 UTC, hours at half past', () => {
    const tz = 'Asia/Kolkata';
    expect(periodBounds(utc('2024-06-15T12:00:00Z'), 'day', tz)).toEqual([utc('2024-06-14T18:30:00Z'), utc('2024-06-15T18:30:00Z')]);
    expect(periodBounds(utc('2024-06-15T12:10:00Z'), 'hour', tz)).toEqual([utc('2024-06-15T11:30:00Z'), utc('2024-06-15T12:30:00Z')]);
    expect(periodBounds(utc('2024-06-15T12:10:00Z'), 'week', tz)).toEqual([utc('2024-06-09T18:30:00Z'), utc('2024-06-16T18:30:00Z')]);
  });

  it('Australia/Lord_Howe: a 30-minute DST shift gives days of 23.5 and 24.5 hours and hours of 30 minutes', () => {
    const tz = 'Australia/Lord_Howe';
    // 6 October 2024, 02:00 (+10:30) -> 02:30 (+11).
    expect(len(utc('2024-10-06T03:00:00Z'), 'day', tz)).toBe(23.5 * H);
    expect(periodBounds(utc('2024-10-05T15:45:00Z'), 'hour', tz)).toEqual([utc('2024-10-05T15:30:00Z'), utc('2024-10-05T16:00:00Z')]);
    // 7 April 2024, 02:00 (+11) -> 01:30 (+10:30).
    expect(len(utc('2024-04-07T03:00:00Z'), 'day', tz)).toBe(24.5 * H);
    expect(periodBounds(utc('2024-04-06T15:10:00Z'), 'hour', tz)).toEqual([utc('2024-04-06T15:00:00Z'), utc('2024-04-06T15:30:00Z')]);
  });

  it('America/Santiago: DST changes at midnight, so one day starts at 01:00 and another lasts 25 hours', () => {
    const tz = 'America/Santiago';
    // 8 September 2024: 00:00 (-04) -> 01:00 (-03); the day starts at the jump.
    expect(periodBounds(utc('2024-09-08T12:00:00Z'), 'day', tz)).toEqual([utc('2024-09-08T04:00:00Z'), utc('2024-09-09T03:00:00Z')]);
    // 6 April 2024 ends at 00:00 (-03), clocks go back to 23:00 (-04): the 6th lasts 25 hours.
    expect(len(utc('2024-04-06T12:00:00Z'), 'day', tz)).toBe(25 * H);
  });
});

describe('PeriodCache', () => {
  it('holds the period containing now, and moves when now leaves it (either way)', () => {
    const c = new PeriodCache('day', 'Europe/Paris');
    c.at(utc('2024-03-31T12:00:00Z'));
    expect([c.start, c.end]).toEqual([utc('2024-03-30T23:00:00Z'), utc('2024-03-31T22:00:00Z')]);
    c.at(utc('2024-03-31T21:59:59.999Z'));
    expect(c.start).toBe(utc('2024-03-30T23:00:00Z'));
    c.at(utc('2024-03-31T22:00:00Z'));
    expect([c.start, c.end]).toEqual([utc('2024-03-31T22:00:00Z'), utc('2024-04-01T22:00:00Z')]);
    c.at(utc('2024-03-30T22:59:59Z'));
    expect(c.end).toBe(utc('2024-03-30T23:00:00Z'));
    // Every instant lands inside the period the cache holds for it.
    const h = new PeriodCache('hour', 'Australia/Lord_Howe');
    for (let t = utc('2024-04-06T13:00:00Z'); t < utc('2024-04-06T18:00:00Z'); t += 7 * 60_000) {
      h.at(t);
      expect(h.start).toBeLessThanOrEqual(t);
      expect(h.end).toBeGreaterThan(t);
      expect([h.start, h.end]).toEqual(reference(t, 'hour', 'Australia/Lord_Howe'));
    }
  });
});
