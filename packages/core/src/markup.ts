/**
 * One escaping template for the HTML reports and the SVG charts: every interpolated value is escaped unless it is
 * markup already (made by {@link markup} or marked with {@link rawMarkup}).
 */

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text that is markup already: inserted by {@link markup} as it is. */
export class Markup {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** Escapes text for HTML or XML content and quoted attribute values (`& < > " '`). */
export function escapeMarkup(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ENTITIES[c]!);
}

/** Marks trusted text (a rendered SVG, a data URI built here) as markup, so {@link markup} inserts it unescaped. */
export function rawMarkup(text: string): Markup {
  return new Markup(text);
}

function render(value: unknown): string {
  if (value === null || value === undefined || value === false) return '';
  if (value instanceof Markup) return value.text;
  if (Array.isArray(value)) return value.map(render).join('');
  return escapeMarkup(String(value));
}

/**
 * Tagged template of HTML or SVG: interpolated strings and numbers are escaped, {@link Markup} values are inserted as
 * they are, arrays are concatenated item by item, and `null`, `undefined` and `false` insert nothing.
 *
 * @example
 * markup`<td>${name}</td>`; // name "a<b" gives <td>a&lt;b</td>
 * markup`<tr>${rows.map((r) => markup`<td>${r}</td>`)}</tr>`;
 */
export function markup(strings: TemplateStringsArray, ...values: unknown[]): Markup {
  let text = strings[0]!;
  for (let i = 0; i < values.length; i++) text += render(values[i]) + strings[i + 1]!;
  return new Markup(text);
}
