/**
 * Reading a gateway's /metrics in tests: the Prometheus text exposition
 * format (https://prometheus.io/docs/instrumenting/exposition_formats/).
 */
import http from 'node:http';

/** GET /metrics of the admin listener on 127.0.0.1:`adminPort`; the body as text. Rejects on a socket error. */
export function scrape(adminPort: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: adminPort, path: '/metrics' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve(text));
    }).on('error', reject);
  });
}

/**
 * The value of one sample in exposition text: `series` is the metric name
 * with its labels exactly as printed (`name{a="b"}`); null when absent.
 */
export function sampleValue(text: string, series: string): number | null {
  for (const line of text.split('\n')) if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  return null;
}
