/**
 * The error catalogue is a contract (clients branch on the codes): every
 * code is counted in the metrics, documented in the README, and renders a
 * body whose length in characters is its length in bytes (HEAD answers send
 * that length without the body).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Errors, errorBody } from '../../../common/errors.js';
import { ERROR_CODES } from '../../../common/metrics-layout.js';

const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
const defs = Object.entries(Errors);

describe('error catalogue', () => {
  it('has unique codes, each counted by turnpike_gateway_errors_total', () => {
    const codes = defs.map(([, e]) => e.code);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(ERROR_CODES, c).toContain(c);
  });

  it.each(defs)('%s is documented in the README errors table', (_name, e) => {
    const row = readme.split('\n').find((l) => l.startsWith(`| ${e.status} |`) && l.includes('`' + e.code + '`'));
    expect(row, `README has no "| ${e.status} | ... \`${e.code}\`" row`).toBeDefined();
  });

  it.each(defs)('%s renders valid JSON in ASCII, with its status line', (_name, e) => {
    const body = errorBody(e, 'abc-1');
    expect(JSON.parse(body)).toEqual({ error: { code: e.code, message: e.message, requestId: 'abc-1' } });
    expect(Buffer.byteLength(body)).toBe(body.length);
    expect(e.statusLine).toMatch(new RegExp(`^${e.status} [A-Za-z -]+$`));
  });
});
