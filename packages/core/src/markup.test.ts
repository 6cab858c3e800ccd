import { describe, expect, it } from 'vitest';
import { escapeMarkup, markup, rawMarkup } from './markup.js';

describe('markup', () => {
  it('escapes interpolated text and attribute values', () => {
    const name = `<script>alert("x") & 'y'</script>`;
    expect(markup`<td title="${name}">${name}</td>`.text).toBe(
      '<td title="&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;">' +
        '&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;</td>',
    );
    expect(escapeMarkup('a<b')).toBe('a&lt;b');
  });

  it('inserts nested markup and raw markup as they are, concatenates arrays, drops null, undefined and false', () => {
    const rows = ['a&b', 'c'].map((r) => markup`<td>${r}</td>`);
    expect(markup`<tr>${rows}</tr>`.text).toBe('<tr><td>a&amp;b</td><td>c</td></tr>');
    expect(markup`<div>${rawMarkup('<svg/>')}${null}${undefined}${false}${0}</div>`.text).toBe('<div><svg/>0</div>');
  });
});
