import { probeEngines, setupEngine } from '@tessera/core';
import { colour } from '../progress.js';

/** `tessera doctor`: which engines are present, which one `auto` picks, how to get the faster ones. */
export async function doctorCommand(opts: { json?: boolean }): Promise<void> {
  const probes = await probeEngines();
  const chosen = await setupEngine('auto');
  if (opts.json) {
    process.stdout.write(
      JSON.stringify(
        { engines: probes, auto: chosen, node: process.version, cpus: (await import('node:os')).cpus().length },
        null,
        2,
      ) + '\n',
    );
    return;
  }
  for (const p of probes) {
    const mark = p.available ? colour('yes', 'green') : colour('no ', 'yellow');
    process.stdout.write(
      `${mark} ${p.name.padEnd(14)} ${p.detail}${p.install && !p.available ? `\n      install: ${p.install}` : ''}\n`,
    );
  }
  process.stdout.write(`auto picks: ${chosen.name} (${chosen.reason})\n`);
}
