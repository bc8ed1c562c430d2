/**
 * Config text -> plain data. YAML (1.2 core schema: `on`/`yes` stay strings,
 * duplicate keys are errors, alias expansion is bounded) or JSON, chosen by
 * the file extension. Syntax errors carry `file:line:col`.
 */
import { extname } from 'node:path';
import { parseDocument } from 'yaml';

export class ConfigParseError extends Error {
  override readonly name = 'ConfigParseError';
  constructor(
    readonly fileName: string,
    /** 1-based; 0 when unknown. */
    readonly line: number,
    readonly col: number,
    readonly reason: string,
  ) {
    super(line > 0 ? `${fileName}:${line}:${col}: ${reason}` : `${fileName}: ${reason}`);
  }
}

function lineCol(text: string, offset: number): { line: number; col: number } {
  const before = text.slice(0, Math.max(0, Math.min(offset, text.length)));
  const lines = before.split('\n');
  return { line: lines.length, col: lines[lines.length - 1]!.length + 1 };
}

function parseYaml(text: string, fileName: string): unknown {
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, strict: true });
  const err = doc.errors[0];
  if (err !== undefined) {
    const { line, col } = err.linePos?.[0] ?? lineCol(text, err.pos[0]);
    const reason = err.message.split(' at line ')[0]!.trim();
    throw new ConfigParseError(fileName, line, col, `${reason} (YAML syntax error; fix the file and try again)`);
  }
  try {
    // maxAliasCount bounds "billion laughs" alias expansion.
    return doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (e) {
    // Unresolved or excessive aliases surface only here, without a position.
    const reason = e instanceof Error ? e.message : String(e);
    throw new ConfigParseError(fileName, 0, 0, `${reason} (YAML alias error; fix the file and try again)`);
  }
}

function parseJson(text: string, fileName: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    const pos = /at position (\d+)/.exec(message);
    const { line, col } = lineCol(text, pos === null ? text.length : Number(pos[1]));
    // V8 quotes the text around the error (`Unexpected token 'r', ..."url":redis://:pw"... is not valid JSON`):
    // it may be a secret, and the line and column say where it is.
    const reason = message
      .replace(/\s*\(line \d+ column \d+\)/, '')
      .replace(/ in JSON at position \d+/, '')
      .replace(/, (?:\.\.\.)?".*"(?:\.\.\.)? is not valid JSON$/s, ' (not valid JSON)');
    throw new ConfigParseError(fileName, line, col, `${reason} (JSON syntax error; fix the file and try again)`);
  }
}

/**
 * Parses config text; `fileName` picks the format (`.yaml`, `.yml`, `.json`;
 * a name without extension, like `<embedded>`, is read as YAML, which also
 * accepts JSON) and labels errors. Throws ConfigParseError. An empty YAML
 * file gives null.
 */
export function parseConfigText(text: string, fileName: string): unknown {
  const body = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  const ext = extname(fileName).toLowerCase();
  let doc: unknown;
  if (ext === '.yaml' || ext === '.yml' || ext === '') doc = parseYaml(body, fileName);
  else if (ext === '.json') doc = parseJson(body, fileName);
  else {
    throw new ConfigParseError(fileName, 0, 0,
      `unsupported file extension ${JSON.stringify(ext)}; name the config file *.yaml, *.yml or *.json`);
  }
  const depth = nestingDepth(doc);
  if (depth > MAX_DEPTH) {
    throw new ConfigParseError(fileName, 0, 0, `nested deeper than ${MAX_DEPTH} levels (a config is a few levels deep); fix the file and try again`);
  }
  return doc;
}

/**
 * Deepest nesting a document may have. A real config is under 10 levels
 * deep; a hostile one nested 200,000 levels deep would overflow the stack
 * of whatever walks it next (the validator, postMessage's structured clone).
 */
export const MAX_DEPTH = 64;

/** Nesting depth of plain data, walked without recursion (it stops counting past MAX_DEPTH). */
function nestingDepth(v: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[v, 1]];
  while (stack.length > 0) {
    const [x, d] = stack.pop()!;
    if (x === null || typeof x !== 'object') continue;
    if (d > max) max = d;
    if (max > MAX_DEPTH) return max;
    for (const child of Array.isArray(x) ? x : Object.values(x as object)) stack.push([child, d + 1]);
  }
  return max;
}
