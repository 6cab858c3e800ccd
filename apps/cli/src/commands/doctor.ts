import { probeEngines, setupEngine } from '@tessera/core';
import { colour } from '../progress.js';
import { importOnnx } from '../runtime.js';

/** What `doctor` says of the ONNX prediction runtime. */
async function probeOnnx(): Promise<{ available: boolean; detail: string; cuda: boolean; install?: string }> {
  const onnx = await importOnnx().catch(() => null);
  if (!onnx) {
    return {
      available: false,
      detail: '@tessera/onnx is not installed',
      cuda: false,
      install: 'npm install @tessera/onnx',
    };
  }
  const cuda = onnx.cudaProviderInstalled();
  return {
    available: true,
    detail: `onnxruntime-node ${onnx.ONNXRUNTIME_VERSION}, prediction default; CUDA provider ${cuda ? 'present (--device cuda)' : 'absent'}`,
    cuda,
    install: cuda ? undefined : 'for GPUs: ONNXRUNTIME_NODE_INSTALL=1 npm rebuild onnxruntime-node',
  };
}

/** `tessera doctor`: which engines are present, which one `auto` picks, how to get the faster ones. */
export async function doctorCommand(opts: { json?: boolean }): Promise<void> {
  const probes = await probeEngines();
  const chosen = await setupEngine('auto');
  const onnx = await probeOnnx();
  if (opts.json) {
    process.stdout.write(
      JSON.stringify(
        { engines: probes, auto: chosen, onnx, node: process.version, cpus: (await import('node:os')).cpus().length },
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
  const mark = onnx.available ? colour('yes', 'green') : colour('no ', 'yellow');
  process.stdout.write(`\nprediction runtime:\n${mark} ${'onnx'.padEnd(14)} ${onnx.detail}\n`);
  if (onnx.install) process.stdout.write(`      install: ${onnx.install}\n`);
}
