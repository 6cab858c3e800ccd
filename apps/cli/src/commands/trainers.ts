import { loadTrainers } from '../trainers.js';

/** `tessera trainers`: the trainers the CLI can run, what each learns from, and where it comes from. */
export async function trainersCommand(opts: { json?: boolean }): Promise<void> {
  const { trainers, skipped } = await loadTrainers();
  const rows = [...trainers.values()].map(({ plugin, source }) => ({
    name: plugin.name,
    description: plugin.description ?? '',
    learnsFrom: plugin.learnsFrom ?? 'masks',
    apiVersion: plugin.apiVersion,
    source,
  }));
  if (opts.json) {
    const left = skipped.map((s) => ({ package: s.package, error: s.error.message }));
    process.stdout.write(JSON.stringify({ trainers: rows, skipped: left }, null, 2) + '\n');
    return;
  }
  for (const r of rows) {
    const command =
      r.learnsFrom === 'images' ? `tessera pretrain --trainer ${r.name}` : `tessera train --trainer ${r.name}`;
    process.stdout.write(`${r.name}  ${r.description}\n  learns from ${r.learnsFrom}; from ${r.source}; ${command}\n`);
  }
}
